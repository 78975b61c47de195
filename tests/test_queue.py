"""Many sources, one job (vs_uav.app.queue): inputs expanded, outputs named, every file checked
before the first render, a broken file reported while the others render, a re-run skipping
what it finished. Real files, real vspipe and ffmpeg, the tiny reference model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MODEL_DIR

from vs_uav.app.job import JobError, UpscaleJob
from vs_uav.app.queue import expand_sources, finished_before, is_queue, output_of, plan_queue, record_path
from vs_uav.media.encoder import EncoderSettings
from vs_uav.media.probe import count_frames
from vs_uav.settings import UpscaleSettings

UAV = str(Path(sys.executable).parent / "uav")
FFV1 = EncoderSettings(codec="ffv1")


def video(path: Path, frames: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=32x24:rate=10",
                    "-f", "lavfi", "-i", "sine", "-frames:v", str(frames), "-t", f"{frames / 10}", "-c:v",
                    "libx264", "-c:a", "aac", str(path)], check=True)
    return path


def touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_inputs_expand_to_files_folders_and_globs_in_order_each_once(tmp_path):
    reels = tmp_path / "reels"
    b, a = touch(reels / "b.mov"), touch(reels / "a.mp4")
    # What vs-uav writes next to sources, and what is not a video, is not a source.
    for name in ("a.uav.mkv", ".a.uav.mkv.uav-done.json", "c.partial.mkv", ".hidden.mp4", "notes.txt"):
        touch(reels / name)
    scans = [touch(tmp_path / "scans" / f"s{i}.mkv") for i in (2, 1)]
    assert expand_sources([str(reels)]) == [a, b]
    assert expand_sources([str(tmp_path / "scans" / "*.mkv"), str(a), str(reels)]) == [scans[1], scans[0], a, b]
    with pytest.raises(JobError, match=r"^input '.*/nothing\*\.mp4' matches no file$"):
        expand_sources([str(tmp_path / "nothing*.mp4")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(JobError, match=r"^input .*/empty is a folder without videos; accepted: a video file or a folder of them "):
        expand_sources([str(tmp_path / "empty")])
    assert expand_sources([str(tmp_path / "missing.mp4")]) == [tmp_path / "missing.mp4"]  # the job says why


def test_outputs_go_to_a_folder_or_a_pattern_and_never_collide(tmp_path):
    src = tmp_path / "in" / "reel 1.mp4"
    assert output_of(src, None, FFV1) is None  # next to the source
    assert output_of(src, str(tmp_path / "out"), FFV1) == tmp_path / "out" / "reel 1.uav.mkv"
    assert output_of(src, str(tmp_path / "out") + "/", EncoderSettings(codec="prores")) == \
        tmp_path / "out" / "reel 1.uav.mov"
    assert output_of(src, str(tmp_path / "{stem}_4x.mkv"), FFV1) == tmp_path / "reel 1_4x.mkv"
    with pytest.raises(JobError, match=r"^--output '.*\{stme\}\.mkv': accepted: a folder, or a pattern with \{stem\}"):
        output_of(src, str(tmp_path / "{stme}.mkv"), FFV1)
    with pytest.raises(JobError, match=r"^--output .*/one\.mkv: several sources need a folder or a pattern"):
        output_of(src, str(tmp_path / "one.mkv"), FFV1)
    # A queue or one file into one output: the CLI's choice.
    one = touch(tmp_path / "one.mp4")
    assert not is_queue([str(one)], None) and not is_queue([str(one)], str(tmp_path / "o.mkv"))
    assert is_queue([str(one)], str(tmp_path / "outs")) and is_queue([str(one), str(src)], None)
    assert is_queue([str(tmp_path / "*.mp4")], None) and is_queue([str(tmp_path)], None)
    # Two sources with one name into one folder: refused before anything runs.
    a, b = touch(tmp_path / "x" / "clip.mp4"), touch(tmp_path / "y" / "clip.mp4")
    with pytest.raises(JobError, match=rf"^--output: {a} and {b} would both be written to .*/clip\.uav\.mkv; "):
        plan_queue([str(a), str(b)], UpscaleSettings(), FFV1, str(tmp_path / "out"))
    with pytest.raises(JobError, match=r"would both be written to .*/clip-clip\.mp4\.mkv; "):
        plan_queue([str(a), str(b)], UpscaleSettings(), FFV1, str(tmp_path / "{stem}-{name}.mkv"))
    jobs = plan_queue([str(a)], UpscaleSettings(), FFV1, str(tmp_path / "{stem}-{name}.mkv"))
    assert [j.output for j in jobs] == [tmp_path / "clip-clip.mp4.mkv"]


def test_folders_in_the_settings_are_made_absolute_for_the_script(tmp_path, monkeypatch):
    """The script runs in the work folder: a relative --model or --cache-dir would name
    another folder there (it did: vspipe said 'model folder not found')."""
    src = touch(tmp_path / "a.mp4")
    monkeypatch.chdir(tmp_path)
    job = UpscaleJob.create(src, UpscaleSettings(model="models/uav", cache_dir="cache"), FFV1)
    assert (job.settings.model, job.settings.cache_dir) == (str(tmp_path / "models/uav"), str(tmp_path / "cache"))
    assert UpscaleJob.create(src, UpscaleSettings(), FFV1).settings.model == ""  # the default stays the default


@pytest.mark.slow
def test_a_queue_checks_every_file_first_renders_the_good_ones_and_resumes(tmp_path):
    folder = tmp_path / "reels"
    good = [video(folder / "a.mp4"), video(folder / "c.mp4", frames=6)]
    broken = touch(folder / "b.mp4", "not a video")
    out = tmp_path / "out"
    # A relative model folder, from another working folder: as a user types it.
    model = os.path.relpath(MODEL_DIR, tmp_path)
    command = [UAV, "upscale", str(folder), "-o", str(out), "--model", model, "--steps", "1", "--codec", "ffv1"]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    lines = run.stderr.splitlines()
    assert run.returncode == 1, run.stderr[-3000:]
    said = [i for i, line in enumerate(lines) if f"[2/3] {broken}: input {broken}: not a video" in line]
    first_render = next(i for i, line in enumerate(lines) if re.search(r"\[1/3\] .*a\.mp4 -> ", line))
    assert any(re.search(r"\[3/3\] .*c\.mp4 -> ", line) for line in lines)  # numbered as when checked
    assert said and said[0] < first_render, run.stderr  # reported before the first render
    assert lines[-1] == "uav upscale: 3 files: 2 done, 1 failed, 0 skipped (finished before); 14 frames in " \
        f"{lines[-1].split(' in ')[-1]}" and re.search(r"in \d+ s$", lines[-1]), lines[-1]
    outputs = [out / "a.uav.mkv", out / "c.uav.mkv"]
    assert [count_frames(p) for p in outputs] == [8, 6]
    assert sorted(p.name for p in out.iterdir()) == [".a.uav.mkv.uav-done.json", ".c.uav.mkv.uav-done.json",
                                                   "a.uav.mkv", "c.uav.mkv"]  # no work folder left
    assert json.loads(record_path(outputs[0]).read_text())["frames"] == 8
    # The same command again: the finished files are skipped, the broken one is said again.
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 1 and "->" not in again.stderr, again.stderr
    assert f"uav upscale: {outputs[0]} was finished by an earlier run: skipped" in again.stderr
    assert again.stderr.splitlines()[-1].startswith("uav upscale: 3 files: 0 done, 1 failed, 2 skipped")
    # Other settings, a changed source or a touched output are not "finished".
    job = plan_queue([str(good[0])], UpscaleSettings(model=str(MODEL_DIR), steps=1), FFV1, str(out))[0]
    assert finished_before(job)
    assert not finished_before(plan_queue([str(good[0])], UpscaleSettings(model=str(MODEL_DIR), steps=2), FFV1,
                                          str(out))[0])
    os.utime(outputs[0], ns=(0, 0))
    assert not finished_before(job)


@pytest.mark.slow
def test_ctrl_c_stops_the_queue_where_it_is(tmp_path):
    import signal
    import time

    sources = [video(tmp_path / "in" / f"{n}.mp4") for n in "ab"]
    out = tmp_path / "out"
    proc = subprocess.Popen([UAV, "upscale", *map(str, sources), "-o", str(out), "--model", str(MODEL_DIR),
                             "--steps", "300", "--codec", "ffv1"], stderr=subprocess.PIPE, text=True)
    seen = ""
    deadline = time.monotonic() + 120
    while "chunk 1/1 step" not in seen and time.monotonic() < deadline:  # the first file is denoising
        seen += proc.stderr.read(1)
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(60) == 130, seen + rest
    assert "[1/2]" in seen and "[2/2]" not in rest, seen + rest
    assert re.search(r"uav upscale: stopped by SIGINT: vspipe and ffmpeg ended; .*the files finished before are "
                     r"kept, and the same command renders the rest", rest), rest
    assert not (out / "a.uav.mkv").exists() and not (out / "b.uav.mkv").exists()
