"""What the output keeps of its source, end to end: absolute paths, colour tags, the sample
aspect ratio, timing, pixel format, and interlaced sources refused (or deinterlaced).

Small real files made by ffmpeg, rendered by `uav upscale` / the command `uav script` prints
with the tiny reference model, checked with ffprobe. One render per kind of source, checking
several properties each.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
from conftest import MODEL_DIR

from vs_uav.app.plan import plan_preset_render
from vs_uav.app.presets import Preset
from vs_uav.media.encoder import EncoderSettings, encoder_name, encodes
from vs_uav.media.probe import MediaInfo, VideoFormat

BIN = Path(sys.executable).parent
UAV = str(BIN / "uav")
CHEAP = ["--model", str(MODEL_DIR), "--steps", "1", "--chunk-size", "8", "--flow", "dis"]
FRAMES = 8

# name -> (ffmpeg arguments before the output; the file name)
SOURCES = {
    # BT.709, anamorphic, NTSC film rate, with audio.
    "bt709": ("-f lavfi -i testsrc2=size=32x24:rate=24000/1001 -f lavfi -i sine=frequency=440:sample_rate=48000 "
              "-frames:v 8 -t 0.33 -vf setsar=32/27 -c:v libx264 -pix_fmt yuv420p -colorspace bt709 "
              "-color_primaries bt709 -color_trc bt709 -c:a aac", "bt709 l'été.mkv"),
    # Full range, BT.601 (PAL).
    "full601": ("-f lavfi -i testsrc2=size=32x24:rate=25 -frames:v 8 -c:v libx264 -pix_fmt yuv420p -color_range pc "
                "-colorspace bt470bg -color_primaries bt470bg -color_trc smpte170m", "full601.mp4"),
    # Variable frame rate: 4 frames at 30 fps, then 10 fps; audio (its priming delays the video).
    "vfr": ("-f lavfi -i testsrc2=size=32x24:rate=30 -f lavfi -i sine=frequency=440:sample_rate=48000 -frames:v 9 "
            "-t 1 -vf \"setpts='if(lt(N,4),N/30,4/30+(N-4)/10)/TB'\" -fps_mode vfr -c:v libx264 -c:a aac", "vfr.mkv"),
    "rgb": ("-f lavfi -i testsrc2=size=32x24:rate=25 -frames:v 8 -c:v ffv1 -pix_fmt bgr0", "rgb.mkv"),
    "yuv444p10": ("-f lavfi -i testsrc2=size=32x24:rate=25 -frames:v 8 -c:v ffv1 -pix_fmt yuv444p10le", "444.mkv"),
    "gray": ("-f lavfi -i testsrc2=size=32x24:rate=25 -frames:v 8 -c:v ffv1 -pix_fmt gray", "gray.mkv"),
    # Interlaced, top field first (MBAFF wants a height of a multiple of 32).
    "tff": ("-f lavfi -i testsrc2=size=48x32:rate=25 -frames:v 8 -c:v libx264 -flags +ildct+ilme -top 1 "
            "-field_order tt", "tff.mkv"),
}


@pytest.fixture(scope="session")
def sources(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sources")
    made = {}
    for name, (args, filename) in SOURCES.items():
        path = folder / filename
        subprocess.run(["ffmpeg", "-v", "error", "-y", *shlex.split(args), str(path)], check=True)
        made[name] = path
    return made


def ffprobe(path: Path, entries: str = "stream", stream: str = "v:0") -> dict:
    run = subprocess.run(["ffprobe", "-v", "error", "-select_streams", stream, "-show_entries", entries, "-of", "json",
                          str(path)], capture_output=True, text=True, check=True)
    return json.loads(run.stdout)


def video(path: Path) -> dict:
    return ffprobe(path)["streams"][0]


def frame_times(path: Path) -> list[str]:
    packets = ffprobe(path, "packet=pts_time")["packets"]
    return sorted((p["pts_time"] for p in packets), key=float)


def uav(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("UAV_BRIDGE_IMPL", None)
    run = subprocess.run([UAV, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    if check:
        assert run.returncode == 0, run.stderr[-3000:]
    return run


def relative_copy(source: Path, folder: Path) -> Path:
    """The source in ``folder``/in, named relative to ``folder`` (the tests run from there)."""
    (folder / "in").mkdir(parents=True, exist_ok=True)
    (folder / "in" / source.name).write_bytes(source.read_bytes())
    return Path("in") / source.name


# -- fast: no render -------------------------------------------------------------------------------

def test_uav_script_from_another_folder_names_absolute_paths_and_the_sources_tags(sources, tmp_path):
    work = tmp_path / "work"
    src = relative_copy(sources["bt709"], work)
    run = uav("script", str(src), "--script", "s.vpy", "-o", "out/o.mkv", cwd=work)
    script = (work / "s.vpy").read_text(encoding="utf-8")
    assert f"core.bs.VideoSource({str(work / src)!r})" in script
    words = shlex.split(run.stdout)
    assert words[words.index("|") - 2] == str(work / "s.vpy") and words[-1] == str(work / "out" / "o.mkv")
    assert words[words.index("-i", words.index("|") + 5) + 1] == str(work / src)  # the audio
    tags = {w: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("-")}
    assert (tags["-colorspace"], tags["-color_primaries"], tags["-color_trc"], tags["-color_range"],
            tags["-chroma_sample_location"]) == ("bt709", "bt709", "bt709", "tv", "left")
    assert "setsar=32/27" in tags["-vf"] and run.stderr == ""


def test_the_editor_writes_absolute_paths_and_the_tags(sources, tmp_path, monkeypatch, request):
    pytest.importorskip("pytestqt")
    qtbot = request.getfixturevalue("qtbot")
    from vs_uav_gui.window import PresetEditor

    monkeypatch.setenv("UAV_CONFIG_DIR", str(tmp_path / "config"))
    work = tmp_path / "work"
    src = relative_copy(sources["bt709"], work)
    monkeypatch.chdir(work)
    window = PresetEditor()
    qtbot.addWidget(window)
    window.set_source(str(src))
    assert window.output_edit.text() == str(work / "in" / "bt709 l'été.uav.mkv")
    written = window.save_script("scripts/s.vpy")
    assert written == work / "scripts" / "s.vpy"
    assert f"core.bs.VideoSource({str(work / src)!r})" in written.read_text(encoding="utf-8")
    words = shlex.split(window.command_view.toPlainText())
    assert words[words.index("|") - 2] == str(written) and words[-1] == window.output_edit.text()
    assert "-colorspace" in words and "setsar=32/27" in " ".join(words)


def test_what_a_codec_cannot_keep_is_said_in_one_line(sources, tmp_path):
    run = uav("script", str(sources["full601"]), "--script", str(tmp_path / "s.vpy"), "--codec", "prores",
              cwd=tmp_path)
    assert run.stderr == ("uav script: warning: prores: 8-bit 4:2:0 source encoded as 10-bit 4:2:2 (prores_ks has "
                          "no 4:2:0); full-range source converted to limited range (prores holds no full range); .mov holds "
                          "no chroma siting for ProRes: the output's chroma location reads unspecified (the frames "
                          "are sited left; an .mkv output keeps it)\n")
    script = (tmp_path / "s.vpy").read_text(encoding="utf-8")
    assert "format=vs.YUV422P10, range=vs.RANGE_LIMITED" in script
    assert "-color_range tv" in run.stdout and "-colorspace bt470bg" in run.stdout and "-pix_fmt yuv422p10le" in \
        run.stdout


def test_uav_script_refuses_a_source_that_is_not_there(tmp_path):
    """A script of a missing file would fail in vspipe: refused in one line, nothing written."""
    run = uav("script", "missing.mp4", "--script", "s.vpy", cwd=tmp_path, check=False)
    assert run.returncode == 1 and run.stderr.count("\n") == 1 and not run.stdout
    assert run.stderr.startswith(f"uav script: input {tmp_path / 'missing.mp4'}") and "accepted:" in run.stderr
    assert not (tmp_path / "s.vpy").exists()


def test_encoders_are_asked_what_they_take(sources):
    # A trial encode, not the encoder's list alone.
    assert encodes("ffv1", "gray") and not encodes("prores_ks", "gray")


# The README's table of what each codec keeps: (codec, source format, pix_fmt encoded).
KEEPS = [("x265", VideoFormat("YUV", 8, 1, 1), "yuv420p10le"), ("x265", VideoFormat("YUV", 10, 1, 0), "yuv422p10le"),
         ("x265", VideoFormat("YUV", 12, 0, 0), "yuv444p12le"), ("x265", VideoFormat("GRAY", 8), "gray10le"),
         ("x265", VideoFormat("RGB", 8), "gbrp10le"), ("x264", VideoFormat("YUV", 8, 1, 1), "yuv420p"),
         ("x264", VideoFormat("YUV", 8, 1, 0), "yuv422p"), ("x264", VideoFormat("YUV", 10, 0, 0), "yuv444p10le"),
         ("x264", VideoFormat("GRAY", 8), "gray"), ("ffv1", VideoFormat("RGB", 8), "bgr0"),
         ("ffv1", VideoFormat("RGB", 16), "gbrp16le"), ("ffv1", VideoFormat("YUV", 16, 1, 1), "yuv420p16le"),
         ("ffv1", VideoFormat("GRAY", 16), "gray16le"), ("prores", VideoFormat("YUV", 10, 1, 0), "yuv422p10le"),
         ("prores", VideoFormat("YUV", 10, 0, 0), "yuv444p10le")]


@pytest.mark.parametrize("codec, source, pix_fmt", KEEPS, ids=[f"{c}-{s.pix_fmt}" for c, s, _ in KEEPS])
def test_each_codec_keeps_what_the_readme_says(codec, source, pix_fmt):
    encoder = EncoderSettings(codec=codec)
    if not encodes(encoder_name(codec), pix_fmt):
        pytest.skip(f"this ffmpeg's {encoder_name(codec)} has no {pix_fmt}")
    assert encoder.encoding_format(source) == (VideoFormat.from_pix_fmt(pix_fmt), pix_fmt, "")
    args = encoder.ffmpeg_video_args(pix_fmt)
    assert args[args.index("-pix_fmt") + 1] == pix_fmt
    if codec == "prores":  # 4444 for 4:4:4: HQ is a 4:2:2 profile
        assert args[args.index("-profile:v") + 1] == ("4" if pix_fmt.startswith("yuv444") else "3")


def test_what_the_source_does_not_say_stays_unsaid():
    plain = MediaInfo(width=32, height=24, frames=8, format=VideoFormat("YUV", 8, 1, 1), fps=Fraction(25))
    result = plan_preset_render(Preset("plain"), Path("/in.mp4"), media=plain)
    command = result.command
    assert not any(f" -{tag} " in command for tag in ("colorspace", "color_primaries", "color_trc",
                                                      "chroma_sample_location"))
    # Except the range: every conversion took the untagged YUV to be limited, and so it is tagged
    # (x265 writes it regardless), with no conversion for it in the script.
    assert "-vf setparams=range=tv -color_range tv" in command and "RANGE_LIMITED" not in result.script
    assert "-pix_fmt yuv420p10le" in command


def test_an_interlaced_source_is_refused_with_the_ways_to_deinterlace_it(sources, tmp_path):
    tff = sources["tff"]
    for command in (["upscale", str(tff), "-o", str(tmp_path / "o.mkv"), *CHEAP],
                    ["script", str(tff), "--script", str(tmp_path / "s.vpy")]):
        run = uav(*command, cwd=tmp_path, check=False)
        assert run.returncode == 1 and run.stderr.count("\n") == 1, run.stderr
        assert run.stderr.startswith(f"uav {command[0]}: input {tff} is interlaced (top field first); accepted: "
                                     "progressive video \u2014 deinterlace it ")
        assert f"ffmpeg -i {tff} -vf bwdif=mode=send_field" in run.stderr
        assert ("--deinterlace bwdif" in run.stderr) == (command[0] == "upscale")
    assert not (tmp_path / "o.mkv").exists() and not (tmp_path / "s.vpy").exists()
    # The editor still shows the script, saying at its top why it will be refused.
    script = plan_preset_render(Preset("p"), tff).script
    header = " ".join(line[2:] for line in script.splitlines() if line.startswith("# "))
    assert f"Warning: input {tff} is interlaced (top field first)" in header


def test_the_filter_refuses_interlaced_frames(sources, tmp_path):
    script = tmp_path / "tff.vpy"
    script.write_text("import vapoursynth as vs\ncore = vs.core\n"
                      f"clip = core.bs.VideoSource({str(sources['tff'])!r})\n"
                      f"core.uav.Upscale(clip, model={str(MODEL_DIR)!r}).set_output()\n", encoding="utf-8")
    run = subprocess.run([str(BIN / "vspipe"), "-c", "y4m", str(script), "-"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, timeout=300)
    assert run.returncode != 0
    assert ("uav.Upscale: clip is interlaced (_FieldBased=2, top field first); accepted: progressive frames \u2014 "
            "deinterlace first, e.g. clip = core.resize.Bob(clip, tff=True)") in run.stderr, run.stderr[-2000:]


def test_the_filter_refuses_bottom_field_first_frames_in_process():
    import vapoursynth as vs

    import vs_uav

    clip = vs.core.std.SetFrameProps(vs.core.std.BlankClip(width=32, height=24, format=vs.YUV420P8, length=8),
                                     _FieldBased=1)
    with pytest.raises(vs.Error, match=r"^uav\.Upscale: clip is interlaced \(_FieldBased=1, bottom field first\); "
                                       r"accepted: progressive frames .* tff=False"):
        vs_uav.upscale(clip, model=str(MODEL_DIR))


def test_timing_is_read_from_every_frame(sources):
    from vs_uav.media.probe import probe
    from vs_uav.media.script import reading_script

    def info(name):
        return probe(sources[name], reading_script(sources[name]))

    full601, bt709, vfr = info("full601"), info("bt709"), info("vfr")
    assert full601.fps == Fraction(25) and full601.times is None  # constant from 0: y4m's rate says it all
    # Constant, but the video starts after the audio (the AAC encoder's priming): every time is kept.
    assert bt709.fps == Fraction(24000, 1001) and bt709.times is not None and bt709.times[0] > 0
    assert vfr.time_base == Fraction(1, 1000) and vfr.times is not None and len(vfr.times) == 9
    gaps = {b - a for a, b in zip(vfr.times[4:], vfr.times[5:])}
    assert gaps == {100} and vfr.times[0] > 0  # 10 fps at the end


# -- slow: rendered through the model ----------------------------------------------------------------

@pytest.mark.slow
def test_bt709_anamorphic_film_rate_from_a_relative_path_with_x265(sources, tmp_path):
    work = tmp_path / "work"
    src = relative_copy(sources["bt709"], work)
    uav("upscale", str(src), "-o", "out/o.mkv", *CHEAP, cwd=work)
    out = work / "out" / "o.mkv"
    v = video(out)
    assert (v["width"], v["height"], v["pix_fmt"]) == (128, 96, "yuv420p10le")  # x265: at least 10-bit
    assert (v["color_space"], v["color_primaries"], v["color_transfer"], v["color_range"], v["chroma_location"]) == \
        ("bt709", "bt709", "bt709", "tv", "left")
    assert v["sample_aspect_ratio"] == "32:27" and v["field_order"] == "progressive"
    assert v["r_frame_rate"] == "24000/1001" and frame_times(out) == frame_times(work / src)
    assert ffprobe(out, "stream=codec_name", "a")["streams"][0]["codec_name"] == "aac"


@pytest.mark.slow
def test_full_range_bt601_with_x264(sources, tmp_path):
    out = tmp_path / "o.mp4"
    uav("upscale", str(sources["full601"]), "-o", str(out), "--codec", "x264", *CHEAP, cwd=tmp_path)
    v = video(out)
    assert (v["color_space"], v["color_primaries"], v["color_transfer"], v["color_range"]) == \
        ("bt470bg", "bt470bg", "smpte170m", "pc")
    assert v["pix_fmt"] in ("yuvj420p", "yuv420p") and v["r_frame_rate"] == "25/1" and int(v["nb_frames"]) == FRAMES


@pytest.mark.slow
def test_variable_frame_rate_keeps_every_timestamp_and_the_audio_in_sync(sources, tmp_path):
    src, out = sources["vfr"], tmp_path / "o.mkv"
    uav("upscale", str(src), "-o", str(out), *CHEAP, cwd=tmp_path)
    assert frame_times(out) == frame_times(src)
    for stream in ("v:0", "a:0"):
        assert ffprobe(out, "stream=start_time", stream)["streams"][0]["start_time"] == \
            ffprobe(src, "stream=start_time", stream)["streams"][0]["start_time"]
    duration = float(ffprobe(out, "format=duration")["format"]["duration"])
    assert duration == pytest.approx(float(ffprobe(src, "format=duration")["format"]["duration"]), abs=0.002)


@pytest.mark.slow
def test_rgb_through_the_pipe_into_ffv1(sources, tmp_path):
    out = tmp_path / "o.mkv"
    uav("upscale", str(sources["rgb"]), "-o", str(out), "--codec", "ffv1", *CHEAP, cwd=tmp_path)
    v = video(out)
    assert (v["pix_fmt"], v["color_space"], v["color_range"], v["width"]) == ("bgr0", "gbr", "pc", 128)


@pytest.mark.slow
def test_444_10_bit_with_x264_keeps_it_or_says_why_not(sources, tmp_path):
    out = tmp_path / "o.mp4"
    run = uav("upscale", str(sources["yuv444p10"]), "-o", str(out), "--codec", "x264", *CHEAP, cwd=tmp_path)
    if encodes("libx264", "yuv444p10le"):
        assert video(out)["pix_fmt"] == "yuv444p10le" and "warning" not in run.stderr
    else:
        assert video(out)["pix_fmt"] == "yuv444p"
        assert ("uav upscale: warning: x264: 10-bit 4:4:4 source encoded as 8-bit 4:4:4 (libx264 here has no "
                "10-bit)\n") in run.stderr


@pytest.mark.slow
def test_the_command_uav_script_prints_keeps_gray_run_from_elsewhere(sources, tmp_path):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    elsewhere.mkdir(parents=True)
    src = relative_copy(sources["gray"], work)
    command = uav("script", str(src), "--script", "s.vpy", "-o", "o.mkv", *CHEAP, cwd=work).stdout.strip()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], capture_output=True, text=True,
                         cwd=elsewhere, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    v = video(work / "o.mkv")
    assert v["pix_fmt"].startswith("gray") and (v["width"], v["height"]) == (128, 96), v
    assert v["color_range"] == "pc"  # the source is full-range gray


@pytest.mark.slow
def test_deinterlace_bwdif_gives_one_progressive_frame_per_field(sources, tmp_path):
    out = tmp_path / "o.mkv"
    uav("upscale", str(sources["tff"]), "-o", str(out), "--deinterlace", "bwdif", *CHEAP, cwd=tmp_path)
    v = video(out)
    assert (v["field_order"], v["r_frame_rate"], v["width"], v["height"]) == ("progressive", "50/1", 192, 128)
    assert len(frame_times(out)) == 2 * FRAMES


def test_thousands_of_irregular_timestamps_come_back_exactly(tmp_path):
    # A phone's variable frame rate: every gap differs a little; the filter graph goes to a file.
    import random

    from vs_uav.media.output import ffmpeg_options, needs_filter_file, output_spec, video_filter

    rng, times, t = random.Random(7), [], 0
    for _ in range(3000):
        times.append(t)
        t += rng.choice((33, 33, 34, 40, 67))
    media = MediaInfo(width=16, height=16, frames=len(times), format=VideoFormat("YUV", 8, 1, 1), fps=Fraction(30),
                      time_base=Fraction(1, 1000), times=tuple(times))
    spec = output_spec(media, EncoderSettings(codec="ffv1"))
    assert needs_filter_file(spec)
    graph = tmp_path / "video.filter"
    graph.write_text(video_filter(spec), encoding="utf-8")
    out = tmp_path / "o.mkv"
    frames = subprocess.Popen(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"color=s=16x16:r=30:d={len(times) / 30}",
                               "-f", "yuv4mpegpipe", "-"], stdout=subprocess.PIPE)
    encoder = EncoderSettings(codec="ffv1", audio="none")
    subprocess.run(["ffmpeg", "-v", "error", "-y", *ffmpeg_options(None, encoder, spec, graph), str(out)],
                   stdin=frames.stdout, check=True, timeout=300)
    frames.stdout.close()
    frames.wait()
    assert [round(float(t) * 1000) for t in frame_times(out)] == times
