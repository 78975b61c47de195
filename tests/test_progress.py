"""Progress inside a chunk: uav.Upscale logs every denoising step, the runner parses the lines,
and `uav upscale` shows frames, chunk and step, elapsed and an ETA from measured seconds per step."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from conftest import MODEL_DIR
from test_render import UAV, env

from vs_uav.engine.driver import CACHED_CHUNK, STEP_PROGRESS
from vs_uav.media.render import ProgressClock, RenderJob, render, steps_left


class Clock:
    """Time that moves only when the test says."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("step, steps, chunk, chunks, left", [
    (1, 30, 1, 4, 29 + 3 * 30), (30, 30, 1, 4, 3 * 30), (3, 3, 2, 2, 0), (1, 1, 1, 5, 4), (0, 8, 1, 1, 8),
])
def test_steps_left_counts_this_chunk_and_the_chunks_after_it(step, steps, chunk, chunks, left):
    assert steps_left(step, steps, chunk, chunks) == left


def test_the_eta_is_seconds_per_measured_step_times_the_steps_left():
    clock = Clock()
    eta = ProgressClock(clock)
    assert eta.eta() is None  # nothing measured
    clock.now += 60  # loading the model: not a step
    eta.on_step(1, 10, 1, 3)
    assert eta.eta() is None  # one step is no rate yet
    clock.now += 4
    eta.on_step(2, 10, 1, 3)
    clock.now += 2
    eta.on_step(3, 10, 1, 3)
    assert eta.seconds_per_step() == pytest.approx(3.0)  # (4 + 2) s over 2 steps; the 60 s of loading excluded
    assert eta.eta() == pytest.approx(3.0 * (7 + 2 * 10))
    clock.now += 5  # counts down between steps
    assert eta.eta() == pytest.approx(3.0 * 27 - 5)
    eta.frames(10, 30)  # frames arriving do not override the step estimate
    assert eta.eta() == pytest.approx(3.0 * 27 - 5)
    assert eta.elapsed == pytest.approx(71)


def test_the_eta_never_says_zero_while_frames_are_still_being_written():
    """The last step done, the last chunk's frames still decoding (a slow source, a long
    sequence): the ETA goes by the frames written, unknown until two arrive, never 00:00."""
    clock = Clock()
    eta = ProgressClock(clock)
    for step in (1, 2):
        clock.now += 3
        eta.on_step(step, 2, 1, 1)
    eta.frames(0, 100)
    clock.now += 30
    assert eta.eta() is None  # the steps' count-down is over, no frame is written yet: unknown, not 00:00
    eta.frames(10, 100)
    clock.now += 10
    eta.frames(20, 100)
    assert eta.eta() == pytest.approx(80.0)  # 1 s a frame since the first frames, 80 left
    eta.frames(100, 100)
    assert eta.eta() == 0.0


def test_chunks_read_from_a_cache_cost_nothing_and_cached_renders_fall_back_to_frames():
    clock = Clock()
    resumed = ProgressClock(clock)
    for chunk in (1, 2):  # chunks 1-2 came from the cache, in no time
        resumed.on_cached(chunk, 4)
    resumed.frames(16, 32)
    clock.now += 10
    resumed.on_step(1, 2, 3, 4)  # the first step computed: chunk 3 of 4
    clock.now += 1
    resumed.on_step(2, 2, 3, 4)
    assert resumed.eta() == pytest.approx(1.0 * 2)  # chunk 4's two steps; nothing for chunks 1-2
    assert resumed.phase() == "chunk 3/4 step 2/2 (2 chunks from the cache)"
    cached = ProgressClock(clock)
    clock.now += 8
    cached.frames(8, 32)  # no step at all: every chunk is in the cache
    clock.now += 2
    cached.frames(16, 32)
    assert cached.eta() == pytest.approx(2 / 8 * 16)  # from the first frames on


def test_a_resume_does_not_count_the_model_loading_as_the_first_frames_cost():
    # The case: 45 s of loading, then a cached chunk's frames arrive at once; the old ETA
    # (45 s per frame x 24 frames left) said 18 minutes for a job that took 40 s.
    clock = Clock()
    eta = ProgressClock(clock)
    eta.total = 25  # known from the probe before vspipe says it
    assert eta.phase() == "loading the model" and eta.eta() is None
    clock.now += 45
    eta.on_cached(1, 3)
    assert eta.phase() == "chunk 1/3 from the cache"
    eta.frames(1, 25)
    assert eta.eta() is None  # one frame is no rate
    clock.now += 0.5
    eta.frames(9, 25)
    assert eta.eta() == pytest.approx(0.5 / 8 * 16)
    eta.on_cached(2, 3)
    assert eta.phase() == "chunk 2/3 from the cache (2 chunks from the cache)"


def test_steps_counted_over_a_chunks_scene_pieces_do_not_inflate_later_chunks():
    clock = Clock()
    eta = ProgressClock(clock)
    for step in range(1, 7):  # chunk 1 of 3 has two pieces of 3 steps: 6 steps
        eta.on_step(step, 6, 1, 3)
        clock.now += 1
    eta.on_step(1, 3, 2, 3)
    assert eta.phase() == "chunk 2/3 step 1/3"
    assert eta.eta() == pytest.approx(1.0 * (2 + 3))  # chunk 3 counted at 3 steps, not 6


def test_the_runner_parses_step_lines_and_warnings_in_order(tmp_path):
    # A script that logs the filter's step lines (and a warning) on its first frame: no model. All on one
    # frame, since vspipe asks for frames in parallel and two frames' callbacks may interleave.
    lines = [STEP_PROGRESS.format(chunk=c, chunks=2, step=s, steps=3) for c in (1, 2) for s in (1, 2, 3)]
    lines[3:3] = [CACHED_CHUNK.format(chunk=1, chunks=2, first=0, last=7, folder=tmp_path / "cache" / "chunk0")]
    script = tmp_path / "steps.vpy"
    script.write_text(f"""
import vapoursynth as vs
core = vs.core
LINES = {lines!r}

def log(n, f):
    if n == 0:
        core.log_message(vs.MESSAGE_TYPE_WARNING, "prompt: 3 CLIP tokens dropped")
        for line in LINES:
            core.log_message(vs.MESSAGE_TYPE_INFORMATION, "uav.Upscale: " + line)
    return f

clip = core.std.BlankClip(width=32, height=24, length=4, format=vs.YUV420P8)
core.std.ModifyFrame(clip, clip, log).set_output()
""")
    steps, warnings, frames, cached = [], [], [], []
    result = render(RenderJob(script, tmp_path / "out.mkv", ("-i", "-", "-c:v", "ffv1")),
                    progress=lambda done, total: frames.append((done, total)),
                    step_progress=lambda *event: steps.append(event), warning=warnings.append,
                    cached=lambda *event: cached.append(event))
    assert steps == [(s, 3, c, 2) for c in (1, 2) for s in (1, 2, 3)]
    assert cached == [(1, 2)]  # the chunk driver's line for a chunk read from its disk cache
    assert warnings == ["prompt: 3 CLIP tokens dropped"]
    assert frames[-1] == (4, 4)
    assert "progress chunk" not in result.vspipe_log  # not kept: they would push failures out of the log


@pytest.mark.slow
def test_uav_upscale_shows_every_denoising_step_with_an_eta_from_steps(tmp_path):
    source = tmp_path / "in.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=32x24:rate=10", "-frames:v", "16",
                    str(source)], check=True)
    cuts = tmp_path / "cuts.txt"
    cuts.write_text("4\n")  # a scene cut inside chunk 1 ([0, 8)): two pieces of 3 steps each
    out = tmp_path / "out.mkv"
    run = subprocess.run([UAV, "upscale", str(source), "-o", str(out), "--model", str(MODEL_DIR), "--steps", "3",
                          "--chunk-size", "8", "--codec", "ffv1", "--scene-cuts", str(cuts)], capture_output=True,
                         text=True, env=env(), timeout=300)
    assert run.returncode == 0, run.stderr
    bars = re.split(r"[\r\n]", run.stderr)
    # Before the first step: the clip's length (from the probe) and what is going on, not "0/?".
    assert re.match(r"\[-+\] 0/16 frames, loading the model, \d+ s elapsed, ETA --:--", bars[1]), run.stderr
    seen = [m.groups() for m in (re.search(r"chunk (\d+)/(\d+) step (\d+)/(\d+)", b) for b in bars) if m]
    # Each step in order (a frame arriving redraws the bar with the same step: counted once); the
    # count goes on over chunk 1's two pieces instead of restarting at the cut.
    assert list(dict.fromkeys(seen)) == [("1", "2", s, "6") for s in "123456"] + \
        [("2", "2", s, "3") for s in "123"], run.stderr
    # Before any frame is written there is an ETA: it can only come from the measured steps.
    early = [b for b in bars if re.search(r"\] 0/16 frames, chunk 1/2 step [2-6]/6, \d+ s elapsed, ETA \d\d:\d\d", b)]
    assert early, run.stderr
    assert "16/16 frames" in run.stderr and Path(out).is_file()


@pytest.mark.slow
def test_the_filter_logs_each_denoising_step_for_any_vspipe_user(tmp_path):
    script = tmp_path / "up.vpy"
    script.write_text(f"""
import vapoursynth as vs
core = vs.core
clip = core.std.BlankClip(width=32, height=24, length=16, format=vs.YUV420P8)
core.uav.Upscale(clip, model={str(MODEL_DIR)!r}, steps=2, chunk_size=8).set_output()
""")
    run = subprocess.run([str(Path(UAV).with_name("vspipe")), "-c", "y4m", str(script), "-"], capture_output=True,
                         env=env(), timeout=300)
    assert run.returncode == 0, run.stderr
    logged = re.findall(r"Information: uav\.Upscale: progress chunk (\d)/(\d) step (\d)/(\d)\n",
                        run.stderr.decode(errors="replace"))
    assert logged == [(c, "2", s, "2") for c in "12" for s in "12"], run.stderr
