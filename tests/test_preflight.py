"""`uav upscale` refuses what can fail cheaply before vspipe loads the model: codec/container/audio
(a real one-frame ffmpeg encode), unwritable output and cache folders, too little free disk, a
missing model. Each refusal is one line, takes seconds and leaves nothing behind; the filter
refuses an unwritable cache_dir at creation too."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import pytest
import vapoursynth as vs
from conftest import MODEL_DIR
from test_render import ANIMATION, UAV, VSPIPE, env, vpy

from vs_uav.media.encoder import BITS_PER_PIXEL, CODECS, EncoderSettings
from vs_uav.media.preflight import estimate_output_bytes
from vs_uav.media.probe import MediaInfo, VideoFormat, probe
from vs_uav.media.script import reading_script

YUV420 = VideoFormat("YUV", 8, 1, 1)


def media(width: int, height: int, frames: int, audio: str | None = None, audio_bytes: int = 0) -> MediaInfo:
    return MediaInfo(width, height, frames, YUV420, Fraction(25), audio=audio, audio_bytes=audio_bytes)

ROOT = os.geteuid() == 0  # root writes into read-only folders: only a path under a file stops it


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sources")
    aac, pcm = folder / "aac.mp4", folder / "pcm.mkv"
    ffmpeg("-i", str(ANIMATION), "-frames:v", "8", "-vf", "scale=32:24", "-c:v", "libx264", "-c:a", "aac", str(aac))
    ffmpeg("-i", str(ANIMATION), "-frames:v", "8", "-vf", "scale=32:24", "-c:v", "libx264", "-c:a", "pcm_s16le",
           str(pcm))
    return {"aac": aac, "pcm": pcm}


def upscale(tmp_path: Path, source: Path, output: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    """`uav upscale` with its temporary files in tmp_path/tmp and a cache_dir that the filter
    would create at once: when it does not exist afterwards, vspipe never built the filter."""
    (tmp_path / "tmp").mkdir(exist_ok=True)
    started = time.monotonic()
    run = subprocess.run([UAV, "upscale", str(source), "-o", str(output), "--model", str(MODEL_DIR), "--steps", "1",
                          "--chunk-size", "8", *args], capture_output=True, text=True, timeout=120,
                         env={**env(), "TMPDIR": str(tmp_path / "tmp")})
    return run, time.monotonic() - started


def assert_refused_before_any_work(tmp_path: Path, run, seconds: float, output: Path, message: str) -> None:
    assert run.returncode == 1, run.stderr
    # One line (after any warning about the settings themselves).
    said = [line for line in run.stderr.splitlines() if not line.startswith("uav upscale: warning: ")]
    assert len(said) == 1 and said[0].startswith(f"uav upscale: {message}") and not run.stdout, run.stderr
    # Refused before any work, by evidence (never by the clock): the filter was never created (its
    # cache_dir would be), no work folder was made next to the output, nothing half-written.
    assert not (tmp_path / "cache").exists()
    assert not output.parent.exists() or not any(output.parent.iterdir())  # nothing half-written
    assert not any((tmp_path / "tmp").iterdir())  # no temporary folder left


@pytest.mark.parametrize("codec, ext, audio, message", [
    ("ffv1", ".mp4", "aac", "--codec ffv1 cannot be written to .mp4 (ffmpeg: "),
    ("prores", ".mp4", "aac", "--codec prores cannot be written to .mp4 (ffmpeg: "),
    ("x264", ".mp4", "pcm", "--audio copy: the source's pcm_s16le audio cannot be written to .mp4 (ffmpeg: "),
    ("x265", ".webm", "aac", "--codec x265 cannot be written to .webm (ffmpeg: "),
])
def test_a_codec_or_audio_the_container_cannot_hold_is_refused_before_rendering(tmp_path, sources, codec, ext,
                                                                                 audio, message):
    output = tmp_path / "out" / f"up{ext}"
    run, seconds = upscale(tmp_path, sources[audio], output, "--codec", codec, "--cache-dir", str(tmp_path / "cache"))
    assert_refused_before_any_work(tmp_path, run, seconds, output, message)
    line = run.stderr.strip().splitlines()[-1]
    # What ffmpeg said, once, and what would work instead: found by encoding, so ask ffmpeg too.
    assert "Could not find tag for codec" in line or "not supported" in line or "Only" in line, line
    accepted = line.rsplit("; accepted: ", 1)[1]
    if audio == "pcm":
        assert accepted.startswith("--audio none, or an output ending .mkv")
        suggested = [c.strip() for c in accepted.removeprefix("--audio none, or an output ending ").split(",")]
    else:
        suggested = [c.strip() for c in accepted.split(",")]
        assert ".mkv" in suggested
    assert ext not in suggested
    if codec == "ffv1":  # the README's example
        assert line.endswith("; accepted: .mkv, .mov, .avi"), line


@pytest.mark.parametrize("where", ["under-a-file", "read-only-folder"])
def test_an_unwritable_cache_dir_or_output_folder_is_refused_in_one_line(tmp_path, sources, where):
    if where == "read-only-folder":
        if ROOT:
            pytest.skip("root writes into a read-only folder; the case under a file covers root")
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        bad = locked / "sub"
    else:
        (tmp_path / "a-file").write_text("not a folder")
        bad = tmp_path / "a-file" / "sub"
    output = tmp_path / "out" / "up.mkv"
    run, seconds = upscale(tmp_path, sources["aac"], output, "--cache-dir", str(bad))
    assert_refused_before_any_work(tmp_path, run, seconds, output, f"--cache-dir {bad} is not writable (")
    assert run.stderr.strip().splitlines()[-1].endswith("accepted: a folder this user can create and write")
    output = bad / "up.mkv"
    run, seconds = upscale(tmp_path, sources["aac"], output, "--cache-dir", str(tmp_path / "cache"))
    assert_refused_before_any_work(tmp_path, run, seconds, output, f"--output {bad} is not writable (")


def test_a_missing_model_is_refused_before_rendering(tmp_path, sources):
    output = tmp_path / "out" / "up.mkv"
    run, seconds = upscale(tmp_path, sources["aac"], output, "--model", "/nonexistent/uav", "--cache-dir",
                           str(tmp_path / "cache"))
    assert_refused_before_any_work(tmp_path, run, seconds, output, "--model /nonexistent/uav: model folder not found; "
                                                                   "run `uav download`")


def test_too_little_free_disk_for_the_estimated_output_is_refused(tmp_path):
    """A source whose 4x FFV1 output needs more than the free space: 4000x4000 frames (16000x16000
    out, what ffmpeg still takes), one encoded frame copied over and over (seconds to make, a few MB)."""
    frame = tmp_path / "frame.mkv"
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=4000x4000:r=25", "-frames:v", "1", "-c:v", "libx264", "-preset",
           "fast", "-x264-params", "log-level=error", str(frame))
    free = shutil.disk_usage(tmp_path).free
    per_frame = estimate_output_bytes(media(4000, 4000, 1), EncoderSettings(codec="ffv1"))
    frames = math.ceil(1.5 * free / per_frame) + 1
    source = tmp_path / "huge.mp4"
    ffmpeg("-stream_loop", str(frames - 1), "-i", str(frame), "-c", "copy", str(source))
    # (The frame count the job's one probe finds is what the estimate uses; `uav upscale` below.)
    output = tmp_path / "out" / "up.mkv"
    run, seconds = upscale(tmp_path, source, output, "--codec", "ffv1", "--cache-dir", str(tmp_path / "cache"))
    assert_refused_before_any_work(tmp_path, run, seconds, output,
                                   f"--output {output}: needs about ")
    line = run.stderr.strip().splitlines()[-1]
    assert f"({frames} frames of 16000x16000 ffv1) but " in line and " free; accepted: " in line
    need, have = (float(x) for x in __import__("re").findall(r"([\d.]+) GiB", line)[:2])
    assert need > have and abs(have - free / 2**30) < 2 + 0.05 * free / 2**30


def test_every_codec_has_a_size_estimate_growing_with_quality():
    assert set(BITS_PER_PIXEL) == set(CODECS)
    info = media(320, 240, 100, "aac", 1000)
    sizes = {c: estimate_output_bytes(info, EncoderSettings(codec=c)) for c in CODECS}
    assert sizes["x265"] < sizes["x264"] < sizes["prores"] < sizes["ffv1"]
    assert estimate_output_bytes(info, EncoderSettings(codec="x265", crf=12)) == pytest.approx(
        2 * (sizes["x265"] - 1000) + 1000, rel=1e-6)
    assert estimate_output_bytes(media(320, 240, 0), EncoderSettings()) is None


# -- the filter: a cache_dir it cannot write fails at creation, before any frame -----------------

def test_the_filter_refuses_an_unwritable_cache_dir_at_creation(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    bad = tmp_path / "a-file" / "cache"
    clip = vs.core.std.BlankClip(width=32, height=24, length=16, format=vs.YUV420P8)
    with pytest.raises(vs.Error) as e:
        vs.core.uav.Upscale(clip, model=str(MODEL_DIR), steps=1, chunk_size=8, cache_dir=str(bad))
    assert str(e.value).startswith(f"uav.Upscale: cache_dir={str(bad)!r} is not writable ("), str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_vspipe_stops_at_script_evaluation_on_an_unwritable_cache_dir(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    bad = tmp_path / "a-file" / "cache"
    script = vpy(tmp_path, f"""
clip = core.std.BlankClip(width=32, height=24, length=16, format=vs.YUV420P8)
clip = core.uav.Upscale(clip, model={str(MODEL_DIR)!r}, steps=1, chunk_size=8, cache_dir={str(bad)!r})
clip.set_output()
""")
    run = subprocess.run([VSPIPE, "-c", "y4m", str(script), "-"], capture_output=True, env=env(), timeout=120)
    err = run.stderr.decode(errors="replace")
    assert run.returncode != 0 and not run.stdout  # not one frame
    # vspipe reports a failed script with the .vpy's own traceback; the filter's message is one line.
    assert f"uav.Upscale: cache_dir={str(bad)!r} is not writable (Not a directory); accepted: a folder this user " \
        "can create and write\n" in err, err
    assert not bad.parent.is_dir()


def test_the_probe_says_the_audio_the_estimate_counts(tmp_path):
    source = tmp_path / "a.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=32x24:rate=10:duration=2", "-f", "lavfi", "-i",
           "sine=frequency=440:duration=2", "-c:v", "libx264", "-c:a", "aac", "-b:a", "128k", str(source))
    info = probe(source, reading_script(source))
    assert (info.width, info.height, info.frames, info.audio) == (32, 24, 20, "aac")
    assert 0.5 * 2 * 128_000 / 8 < info.audio_bytes < 1.5 * 2 * 128_000 / 8
    silent = tmp_path / "s.mp4"
    ffmpeg("-i", str(source), "-an", "-c", "copy", str(silent))
    quiet = probe(silent, reading_script(silent))
    assert (quiet.audio, quiet.audio_bytes) == (None, 0)

