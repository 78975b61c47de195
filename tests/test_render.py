"""End to end: core.uav.Upscale in a .vpy under real vspipe, piped into real ffmpeg; a render
killed mid-way and resumed from cache_dir; a crash during a render; the `uav upscale` command.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import MODEL_DIR
from setting_errors import row

VIDEOS = Path(__file__).resolve().parent.parent.parent / "shared" / "videos"
ANIMATION = VIDEOS / "old_animation_1.mp4"  # 320x240, 25 fps, with an audio track
BIN = Path(sys.executable).parent
VSPIPE = str(BIN / "vspipe")
UAV = str(BIN / "uav")

pytestmark = pytest.mark.slow


def env() -> dict[str, str]:
    # The real implementation: no test override of the bridge.
    return {k: v for k, v in os.environ.items() if k != "UAV_BRIDGE_IMPL"}


def probe(path: Path) -> dict:
    run = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                          "stream=codec_type,codec_name,width,height,nb_read_frames", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True)
    return {s["codec_type"]: s for s in json.loads(run.stdout)["streams"]}


def vpy(tmp_path: Path, body: str, name: str = "script.vpy") -> Path:
    script = tmp_path / name
    script.write_text("import vapoursynth as vs\ncore = vs.core\n" + body, encoding="utf-8")
    return script


def test_vpy_with_core_uav_through_vspipe_into_ffmpeg(tmp_path):
    # Only vapoursynth is imported: core.uav comes from the autoloaded native plugin.
    script = vpy(tmp_path, f"""
clip = core.bs.VideoSource({str(ANIMATION)!r})[:10]
clip = core.resize.Bicubic(clip, 64, 48)  # keeps the tiny model's CPU render short
clip = core.uav.Upscale(clip, prompt="an old cartoon", model={str(MODEL_DIR)!r}, steps=2, chunk_size=8)
clip.set_output()
""")
    out = tmp_path / "out.mkv"
    pipe = subprocess.Popen([VSPIPE, "-c", "y4m", str(script), "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env())
    enc = subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", "-", "-c:v", "libx265", "-preset", "ultrafast",
                          "-x265-params", "log-level=error", str(out)], stdin=pipe.stdout, capture_output=True,
                         timeout=300)
    pipe.stdout.close()
    err = pipe.stderr.read().decode(errors="replace")
    assert pipe.wait(timeout=60) == 0, err
    assert enc.returncode == 0, enc.stderr
    video = probe(out)["video"]
    assert (video["codec_name"], video["width"], video["height"], int(video["nb_read_frames"])) == \
        ("hevc", 256, 192, 10)
    # A playable file: ffmpeg decodes every frame without an error.
    dec = subprocess.run(["ffmpeg", "-v", "error", "-i", str(out), "-f", "null", "-"], capture_output=True, text=True)
    assert dec.returncode == 0 and not dec.stderr.strip(), dec.stderr


def _state_files(cache: Path) -> list[Path]:
    return sorted(cache.rglob("state.safetensors"))


def test_killed_render_resumes_from_cache_dir_with_identical_bytes(tmp_path):
    body = """
clip = core.bs.VideoSource({src!r})[:32]
clip = core.resize.Bicubic(clip, 32, 24)
clip = core.uav.Upscale(clip, prompt="a cartoon", model={model!r}, steps=2, chunk_size=8,
                        propagation_steps=[1], flow="dis", cache_dir={cache!r})
clip.set_output()
"""
    cache = tmp_path / "cache"
    fresh = vpy(tmp_path, body.format(src=str(ANIMATION), model=str(MODEL_DIR), cache=""), "fresh.vpy")
    cached = vpy(tmp_path, body.format(src=str(ANIMATION), model=str(MODEL_DIR), cache=str(cache)), "cached.vpy")

    # 1. Start a render with a disk cache and kill it (SIGKILL: no cleanup) once a chunk is on disk.
    first = subprocess.Popen([VSPIPE, "-c", "y4m", str(cached), str(tmp_path / "killed.y4m")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
    deadline = time.monotonic() + 240
    while not _state_files(cache) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    done = _state_files(cache)
    assert 1 <= len(done) < 4, f"the render was not interrupted mid-way ({len(done)} of 4 chunks on disk)"
    stamps = {p: p.stat().st_mtime_ns for p in done}

    # 2. Resume: finished chunks are read back, not recomputed; the output is byte-identical to an
    # uninterrupted render without a cache.
    resumed = subprocess.run([VSPIPE, "-c", "y4m", str(cached), str(tmp_path / "resumed.y4m")], capture_output=True,
                             env=env(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode(errors="replace")
    assert {p: p.stat().st_mtime_ns for p in done} == stamps
    assert len(_state_files(cache)) == 4
    plain = subprocess.run([VSPIPE, "-c", "y4m", str(fresh), str(tmp_path / "plain.y4m")], capture_output=True,
                           env=env(), timeout=300)
    assert plain.returncode == 0, plain.stderr.decode(errors="replace")
    assert (tmp_path / "resumed.y4m").read_bytes() == (tmp_path / "plain.y4m").read_bytes()


def test_a_failure_during_the_render_stops_vspipe_cleanly(tmp_path):
    # Frame 17's source fails while chunk 2 ([8, 20)) is being computed (chunk 1 reads up to
    # frame 15 with its look-ahead): vspipe reports it and exits; no hang.
    script = vpy(tmp_path, f"""
clip = core.std.BlankClip(width=32, height=24, length=20, format=vs.YUV420P8, color=[90, 120, 140])

def broken(n, f):
    if n == 17:
        raise RuntimeError("source frame 17 is unreadable")
    return f

clip = core.std.ModifyFrame(clip, clip, broken)
clip = core.uav.Upscale(clip, model={str(MODEL_DIR)!r}, steps=1, chunk_size=8)
clip.set_output()
""")
    run = subprocess.run([VSPIPE, "-c", "y4m", str(script), "-"], capture_output=True, env=env(), timeout=300)
    assert run.returncode != 0
    err = run.stderr.decode(errors="replace")
    # One line naming the frame and the cause; no Python traceback. vspipe requests several
    # frames at once, so the one it reports is any frame of the failing chunk [8, 20).
    m = re.search(r"uav\.Upscale: frame (\d+) failed: RuntimeError: source frame 17 is unreadable", err)
    assert m and 8 <= int(m[1]) < 20, err
    assert "Traceback" not in err, err
    assert b"FRAME" in run.stdout  # frames of the first chunk were delivered before the failure


def test_uav_upscale_command(tmp_path):
    # A short real clip with its audio: the first 10 frames of the animation, downscaled.
    source = tmp_path / "in put 'clip'.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(ANIMATION), "-frames:v", "10", "-t", "0.4", "-vf",
                    "scale=48:32", "-c:v", "libx264", "-c:a", "aac", str(source)], check=True)
    out = tmp_path / "out dir" / "up é.mkv"
    run = subprocess.run([UAV, "upscale", str(source), "-o", str(out), "--model", str(MODEL_DIR), "--steps", "1",
                          "--chunk-size", "8", "--prompt", "a cartoon", "--codec", "ffv1"],
                         capture_output=True, text=True, env=env(), timeout=300)
    assert run.returncode == 0, run.stderr
    assert not run.stdout  # progress goes to stderr
    assert "10/10 frames" in run.stderr and "ETA" in run.stderr, run.stderr
    streams = probe(out)
    assert (streams["video"]["codec_name"], streams["video"]["width"], streams["video"]["height"],
            int(streams["video"]["nb_read_frames"])) == ("ffv1", 192, 128, 10)
    assert streams["audio"]["codec_name"] == "aac"  # copied unchanged
    assert sorted(p.name for p in out.parent.iterdir()) == ["up é.mkv"]  # no partial file left


@pytest.mark.parametrize("args, message", [
    (["--noise-level", "400"], "uav upscale: " + row(noise_level=400)[1]),
    (["--model", "/nonexistent/uav"], "/nonexistent/uav: model folder not found; run `uav download`"),
    (["-o", "SOURCE"], "uav upscale: --output SOURCE is the input; choose another file"),
])
def test_uav_upscale_refuses_bad_input_and_writes_nothing(tmp_path, args, message):
    source = tmp_path / "in.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=32x24:rate=10:duration=1",
                    str(source)], check=True)
    out = tmp_path / "out" / "o.mkv"
    size = source.stat().st_size
    args = [str(source) if a == "SOURCE" else a for a in args]
    run = subprocess.run([UAV, "upscale", str(source), "-o", str(out), "--model", str(MODEL_DIR), *args],
                         capture_output=True, text=True, env=env(), timeout=300)
    assert run.returncode != 0 and message.replace("SOURCE", str(source)) in run.stderr, run.stderr
    assert not out.parent.exists() or not any(out.parent.iterdir())  # nothing half-written
    assert source.stat().st_size == size


def test_uav_demo_runs_the_main_job_on_a_real_video(tmp_path):
    """`make demo`'s command: the shared animation through core.uav under vspipe into x265."""
    out = tmp_path / "demo.mkv"
    run = subprocess.run([UAV, "demo", "--output", str(out), "--frames", "8", "--width", "32", "--height", "24",
                          "--steps", "2"], capture_output=True, text=True, env=env(), timeout=300)
    assert run.returncode == 0, run.stderr
    assert not run.stdout
    assert "8/8 frames" in run.stderr and "the pictures are meaningless" in run.stderr
    video = probe(out)["video"]
    assert (video["codec_name"], video["width"], video["height"], int(video["nb_read_frames"])) == \
        ("hevc", 128, 96, 8)
