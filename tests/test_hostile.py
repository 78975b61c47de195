"""Hostile input: what comes from outside (file and folder names, tags, presets, captions,
edits, options, weights) runs nothing, replaces or removes nothing of the user's, and a bad
value is refused in one line naming it and what is accepted.

Scripts are generated from every string input carrying line ends of every kind and code; their
syntax tree must hold exactly the statements of the same script made from harmless text, and
real vspipe evaluates them without running the payload (a marker file it would create)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import opentimelineio as otio
import pytest
from conftest import MODEL_DIR

from vs_uav.app.job import JobError, UpscaleJob
from vs_uav.app.plan import plan_preset_render
from vs_uav.app.presets import Preset
from vs_uav.media.encoder import EncoderSettings
from vs_uav.media.script import make_script
from vs_uav.settings import UpscaleSettings
from vs_uav.untrusted import ascii_float, ascii_int, comment, escaped

BIN = Path(sys.executable).parent
UAV, VSPIPE = str(BIN / "uav"), str(BIN / "vspipe")
MARK = Path("/tmp") / f"uav-hostile-{os.getpid()}"  # what a payload would create
# Python code that creates MARK, spelled without '/' (it must fit in a file name).
CODE = '__import__("os").system("touch "+' + "+".join(f'chr(47)+"{p}"' for p in MARK.parts[1:]) + ")#"
# Every character Python, str.splitlines or an editor may end a line at (NUL: no source may hold it).
ENDS = {"CR": "\r", "LF": "\n", "CRLF": "\r\n", "VT": "\x0b", "FF": "\x0c", "NEL": "\x85", "LS": "\u2028",
        "PS": "\u2029", "NUL": "\x00", "RLO": "\u202e"}
QUOTES = "'\"\\'''\"\"\"\\\\"


def payload(end: str) -> str:
    return f"x{end}{CODE}{QUOTES}"


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "UAV_BRIDGE_IMPL"}


def shape(script: str) -> list[str]:
    """The script's statements with every constant blanked: what code it runs."""
    tree = ast.parse(script)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant):
            node.value = None
    return [ast.dump(n) for n in tree.body]


def assert_safe(script: str, benign: str) -> None:
    assert shape(script) == shape(benign)
    assert not any(isinstance(n, ast.Name) and n.id == "__import__" for n in ast.walk(ast.parse(script)))
    assert all(ch == "\n" or ch.isprintable() for ch in script)
    assert not any(line.lstrip().startswith("#") and "coding:" in line for line in script.splitlines()[:2])


@pytest.fixture(autouse=True)
def no_mark():
    MARK.unlink(missing_ok=True)
    yield
    assert not MARK.exists(), "a payload ran"


def video(path: Path, *args: str, size: str = "32x24", frames: int = 6) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={size}:rate=24",
                    "-frames:v", str(frames), *args, "-c:v", "ffv1", str(path)], check=True)
    return path


# -- 1. generated scripts ---------------------------------------------------------------------------

def test_the_helpers_escape_every_line_end_and_read_ascii_numbers_only():
    for end in ENDS.values():
        line = comment(payload(end))
        assert line.startswith("# ") and all(ch.isprintable() for ch in line)
        assert len(ast.parse(line + "\nx = 1\n").body) == 1
    assert comment("coding: utf-7 +AAo-") == "# coding\\x3a utf-7 +AAo-"  # no PEP 263 declaration
    assert escaped("a\r\nb\u2028") == "a\\r\\nb\\u2028"
    for bad in ("²", "٣", "1_0", "nan", "inf", " ", "0x10"):
        with pytest.raises(ValueError):
            ascii_float(bad)
        with pytest.raises(ValueError):
            ascii_int(bad)
    assert (ascii_int(" 12 "), ascii_float("-2.5e1")) == (12, -25.0)


@pytest.mark.parametrize("end", list(ENDS))
def test_every_string_input_stays_in_a_literal_or_an_escaped_comment(end, tmp_path):
    """The one writer, fed each input that reaches a script: the source and output paths (the
    command), a title (preset name and description), prompts, the captions and cuts files."""
    def script(text: str) -> str:
        settings = UpscaleSettings(prompt=text, negative_prompt=text, cache_dir=f"/c/{text}", model=f"/m/{text}")
        encoder = EncoderSettings(captions=f"/cap/{text}.tsv", scene_cuts=f"/cuts/{text}.txt")
        return make_script(Path(f"/in/{text}.mkv"), settings, command=f"vspipe '{text}' | ffmpeg {text}",
                           title=[f"Preset: {text} - {text}"], encoder=encoder, frame_range=(2, 5))
    assert_safe(script(payload(ENDS[end])), script("harmless"))


@pytest.mark.parametrize("end", ["CR", "LF", "CRLF", "LS", "NEL", "VT"])
def test_uav_script_with_hostile_names_and_tags_writes_a_script_vspipe_evaluates_without_running_them(
        end, tmp_path):
    """A source named with the payload, its timecode and title tags holding it, an output folder
    named with it: `uav script` (what the editor's fields make too) and vspipe --info."""
    def script_of(text: str, name: str) -> str:
        source = video(tmp_path / name / f"a{text}.mkv", "-metadata", f"title=t{text}",
                       "-metadata", f"timecode=01:00:00:00{text}")
        script = tmp_path / name / "s.vpy"
        run = subprocess.run([UAV, "script", str(source), "--script", str(script), "-o",
                              str(tmp_path / name / f"out{text}" / "o.mkv"), "--model", str(MODEL_DIR), "--prompt",
                              text], capture_output=True, text=True, env=env())
        assert run.returncode == 0, run.stderr
        info = subprocess.run([VSPIPE, "--info", str(script), "-"], capture_output=True, text=True, env=env(),
                              timeout=120)
        assert info.returncode == 0, info.stderr
        return script.read_text(encoding="utf-8")

    hostile = script_of(payload(ENDS[end]), "hostile")
    assert_safe(hostile, script_of("x", "benign"))
    assert "-timecode" not in hostile and "not carried into the output" in hostile  # the tag dropped, and said


def test_the_editors_plan_of_hostile_fields_is_safe(tmp_path):
    """The editor's source and output fields go through plan_preset_render, the same writer."""
    for end in ENDS.values():
        if end == "\x00":
            continue  # no file name holds NUL
        source = tmp_path / f"s{end}{CODE}.mkv"
        plan = plan_preset_render(Preset("p", description="d"), source, tmp_path / "s.vpy",
                                  tmp_path / f"o{end}{CODE}" / "o.mkv", probe=False)
        assert_safe(plan.script, plan_preset_render(Preset("p", description="d"), tmp_path / "s.mkv",
                                                    tmp_path / "s.vpy", tmp_path / "o" / "o.mkv", probe=False).script)


# -- 2. nothing of the user's replaced or removed --------------------------------------------------

def upscale(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([UAV, "upscale", "--model", str(MODEL_DIR), "--steps", "1", "--codec", "ffv1", *args],
                          capture_output=True, text=True, env=env(), timeout=300, cwd=cwd)


def one_line(run: subprocess.CompletedProcess, *parts: str) -> str:
    lines = [ln for ln in run.stderr.splitlines() if ": warning: " not in ln]
    assert run.returncode == 1 and len(lines) == 1 and not run.stdout, run.stderr
    assert all(p in lines[0] for p in parts), lines[0]
    return lines[0]


def test_a_lock_or_work_folder_that_is_a_link_is_refused_and_what_it_points_to_is_untouched(tmp_path):
    source = video(tmp_path / "in.mkv")
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    work = tmp_path / "out" / ".o.mkv.uav-work"
    work.mkdir(parents=True)
    (work / "lock").symlink_to(precious)
    one_line(upscale(str(source), "-o", str(tmp_path / "out" / "o.mkv")), "lock", "accepted")
    assert precious.read_text() == "mine"
    (work / "lock").unlink()
    work.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    work.symlink_to(elsewhere, target_is_directory=True)
    one_line(upscale(str(source), "-o", str(tmp_path / "out" / "o.mkv")), "a symbolic link", "accepted")
    assert list(elsewhere.iterdir()) == [] and work.is_symlink()


def test_a_file_at_the_output_is_refused_unless_overwrite_and_a_users_partial_name_is_left_alone(tmp_path):
    source = video(tmp_path / "in.mkv")
    out = tmp_path / "precious.mkv"
    out.write_bytes(b"not uav's")
    users = tmp_path / "precious.partial.mkv"  # the name an earlier uav wrote its partial file to
    users.write_bytes(b"also mine")
    one_line(upscale(str(source), "-o", str(out)), f"--output {out}: a file is there already", "--overwrite")
    assert out.read_bytes() == b"not uav's" and sorted(p.name for p in tmp_path.iterdir()) == [
        "in.mkv", "precious.mkv", "precious.partial.mkv"]
    run = upscale(str(source), "-o", str(out), "--overwrite")
    assert run.returncode == 0, run.stderr
    assert out.stat().st_size > 1000 and users.read_bytes() == b"also mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mkv", "precious.mkv", "precious.partial.mkv"]


def test_a_stem_queue_refuses_an_earlier_file_it_did_not_record(tmp_path):
    source = video(tmp_path / "src" / "clip.mkv")
    earlier = tmp_path / "out" / "clip.mkv"
    earlier.parent.mkdir()
    earlier.write_bytes(b"an earlier render, not recorded")
    run = upscale(str(source), "-o", str(tmp_path / "out" / "{stem}.mkv"))
    assert run.returncode == 1 and "a file is there already" in run.stderr and "--overwrite" in run.stderr
    assert earlier.read_bytes() == b"an earlier render, not recorded"


def test_two_sources_with_one_name_get_their_own_pieces_and_the_relinked_clips_point_at_them(tmp_path):
    from vs_uav.app.conform import plan_conform
    from vs_uav.app.relink import conform_jobs, relink

    a, b = video(tmp_path / "a" / "clip.mkv", frames=30), video(tmp_path / "b" / "clip.mkv", frames=30)
    track = otio.schema.Track(kind=otio.schema.TrackKind.Video)
    for path, start in ((a, 2), (b, 10)):
        track.append(otio.schema.Clip(name=path.parent.name, media_reference=otio.schema.ExternalReference(
            target_url=path.as_uri()), source_range=otio.opentime.TimeRange(
                otio.opentime.RationalTime(start, 24), otio.opentime.RationalTime(8, 24))))
    timeline = otio.schema.Timeline()
    timeline.tracks.append(track)
    edit = tmp_path / "cut.otio"
    otio.adapters.write_to_file(timeline, str(edit))
    plan = plan_conform(edit, handles=0)
    jobs = conform_jobs(plan, tmp_path / "restored", UpscaleSettings(), EncoderSettings(codec="ffv1"))
    outputs = [j.output for j in jobs]
    assert len(set(outputs)) == 2 and all(o.name.startswith("clip-") for o in outputs)
    relinked = relink(plan, outputs)
    for clip, job in zip(relinked.find_clips(), jobs):
        assert clip.media_reference.metadata["vs_uav"]["source"] == job.source.as_uri()
        assert clip.media_reference.target_url == job.output.as_uri()


def test_the_disk_estimate_counts_the_chunk_cache(tmp_path):
    import shutil

    from vs_uav.media.preflight import PreflightError, check_disk_space, estimate_cache_bytes, estimate_output_bytes
    from vs_uav.media.probe import MediaInfo, VideoFormat

    def media(frames: int) -> MediaInfo:
        return MediaInfo(960, 540, frames, VideoFormat("YUV", 8, 1, 1), 24)

    settings, encoder = UpscaleSettings(cache_dir=str(tmp_path / "cache")), EncoderSettings(codec="ffv1")
    one = media(32)
    per = estimate_output_bytes(one, encoder) / 32, estimate_cache_bytes(one, settings) / 32
    assert per[1] > 0
    free = shutil.disk_usage(tmp_path).free
    frames = int(free / (per[0] + per[1]) * 1.2)  # the output alone fits, with its cache it does not
    assert estimate_output_bytes(media(frames), encoder) < free
    check_disk_space(tmp_path / "o.mkv", media(frames), encoder)  # without the cache: fits
    with pytest.raises(PreflightError, match=r"with its chunk cache \(.* free; accepted: .*--no-resume"):
        check_disk_space(tmp_path / "o.mkv", media(frames), encoder, settings)


# -- 3. one line for every bad input ---------------------------------------------------------------

@pytest.mark.parametrize("output, says", [
    ("seq/%99999d.png", "exactly one frame-number field"),
    ("seq/%n.png", "exactly one frame-number field"),
    ("seq/%s.png", "exactly one frame-number field"),
    ("seq/%-5d.png", "exactly one frame-number field"),
    ("seq/%d%d.png", "exactly one frame-number field"),
    ("seq/%07d%%.png", "exactly one frame-number field"),
    ("one.png", "one .png file cannot hold a video"),
    ("x/{stem.foo}.mkv", "no other {...}"),
    ("x/{stem:>300}.mkv", "no other {...}"),
    ("x/{0}.mkv", "no other {...}"),
])
def test_bad_output_patterns_are_one_line_before_anything_runs(tmp_path, output, says):
    source = video(tmp_path / "in.mkv")
    one_line(upscale(str(source), "-o", output, cwd=tmp_path), says)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mkv"]


def test_a_stem_that_climbs_out_of_its_folder_and_names_too_long_are_refused(tmp_path):
    from vs_uav.app.queue import plan_queue

    climber = video(tmp_path / "src" / "...mkv")  # its stem is '..'
    with pytest.raises(JobError, match=r"outside .*x; accepted: a source whose name keeps it there"):
        plan_queue([str(climber)], UpscaleSettings(), EncoderSettings(), str(tmp_path / "x" / "{stem}" / "v.mkv"))
    long = video(tmp_path / "src" / ("n" * 246 + ".mkv"))
    with pytest.raises(JobError, match=r"a name of \d+ bytes; accepted: up to 240"):
        UpscaleJob.create(long, UpscaleSettings(), EncoderSettings())


@pytest.mark.parametrize("args, says", [
    (["--frames", "²-³"], "--frames '²-³': accepted: FIRST-LAST"),
    (["--frames", "١-٣"], "--frames '١-٣': accepted: FIRST-LAST"),
    (["--steps", "٣"], "--steps '٣': accepted: an integer"),
    (["--device", "cuda:²"], "device='cuda:²'; accepted:"),
    (["--cluster", "host:²"], "--cluster 'host:²': accepted:"),
    (["--fps", "²"], "argument --fps: invalid float value"),
])
def test_non_ascii_digits_are_refused_in_one_line(tmp_path, args, says):
    source = video(tmp_path / "in.mkv")
    run = upscale(str(source), "-o", str(tmp_path / "o.mkv"), *args)
    lines = run.stderr.strip().splitlines()
    assert run.returncode in (1, 2) and says in lines[-1] and "Traceback" not in run.stderr, run.stderr


def test_a_frame_larger_than_ffmpeg_takes_and_an_absurd_rate_are_one_line(tmp_path):
    big = video(tmp_path / "big.mkv", size="4200x4200", frames=1)
    one_line(upscale(str(big), "-o", str(tmp_path / "o.mkv")), "the output would be 16800x16800; accepted: up to")
    fast = tmp_path / "fast.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=s=32x24:r=1000000", "-frames:v", "4",
                    "-c:v", "libx264", "-video_track_timescale", "1000000", str(fast)], check=True)
    one_line(upscale(str(fast), "-o", str(tmp_path / "f.mkv")), "1e+06 fps; accepted: up to 1000 fps")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.mkv", "fast.mp4"]


def test_a_truncated_source_is_warned_about(tmp_path):
    from vs_uav.media.script import prepare_source

    full = tmp_path / "full.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=s=96x64:r=24,noise=alls=80:allf=t",
                    "-frames:v", "16", "-c:v", "libx264", "-g", "1", "-movflags", "+faststart", str(full)], check=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[:full.stat().st_size * 6 // 10])
    _, media = prepare_source(cut, (), tmp_path)
    assert media.frames < 16 and f"decodes to {media.frames} frames but its header says 16" in media.note
    _, whole = prepare_source(full, (), tmp_path)
    assert "header says" not in whole.note


def test_a_timeline_nested_a_hundred_thousand_deep_is_one_line(tmp_path):
    deep = tmp_path / "deep.otio"
    deep.write_text('{"OTIO_SCHEMA": "Timeline.1", "tracks": ' + '{"a": [' * 100_000 + "]}" * 100_000 + "}")
    run = subprocess.run([UAV, "conform", str(deep), "--plan"], capture_output=True, text=True, env=env())
    assert run.returncode == 1 and run.stderr.count("\n") == 1 and "nested more than 512 levels" in run.stderr
    xml = tmp_path / "deep.xml"
    xml.write_text("<xmeml>" + "<a>" * 50_000 + "</a>" * 50_000 + "</xmeml>")
    run = subprocess.run([UAV, "conform", str(xml), "--plan"], capture_output=True, text=True, env=env())
    assert run.returncode == 1 and run.stderr.count("\n") == 1 and "nested more than 512 levels" in run.stderr


def test_captions_files_take_a_bom_count_columns_and_split_lines_at_lf_only(tmp_path):
    from vs_uav.media.captions import CaptionsError, read_captions

    good = tmp_path / "c.tsv"
    good.write_bytes("\ufeff0\t00:00:00:00\t2\tan old\u2028street\x0c at night\r\n12\t\t\t\n".encode())
    scenes = read_captions(good, 20)
    assert [(s.frame, s.caption) for s in scenes] == [(0, "an old street at night"), (12, "")]
    for line, says in (("5\tonly two", "has 2 columns"), ("²\t\t\tx", "frame '²'"), ("3\t\t٣\tx", "picture '٣'")):
        bad = tmp_path / "bad.tsv"
        bad.write_text(f"0\t\t\tfirst\n{line}\n", encoding="utf-8")
        with pytest.raises(CaptionsError, match=f"line 2: .*{says}") as err:
            read_captions(bad, 20)
        assert "\n" not in str(err.value)


def test_a_weight_file_holding_pickled_code_is_named_as_such_and_not_run(tmp_path):
    import torch

    from vs_uav.weights.folder import WeightsError, read_state_dict

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {MARK}",))

    path = tmp_path / "diffusion_pytorch_model.bin"
    torch.save({"w": torch.zeros(2), "x": Payload()}, path)
    with pytest.raises(WeightsError) as err:
        read_state_dict(path)
    said = str(err.value)
    assert "holds pickled Python objects other than tensors" in said and "not loaded" in said
    assert "weights_only=False" not in said and "truncated" not in said
