"""The one job layer (vs_uav.app.job): what `uav upscale`, the preset editor and the cluster share.
A job is made, checked and run as a library call, with real vspipe, ffmpeg and the tiny model."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import MODEL_DIR

from vs_uav.app.cluster import ClusterOptions, work_folder
from vs_uav.app.job import JobError, JobEvents, JobStopped, UpscaleJob, run_job, upscale_command
from vs_uav.app.presets import Preset
from vs_uav.media.encoder import EncoderSettings
from vs_uav.settings import UpscaleSettings

SETTINGS = UpscaleSettings(model=str(MODEL_DIR), steps=2, chunk_size=8, flow="dis")
FFV1 = EncoderSettings(codec="ffv1", audio="none")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("job") / "in.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=32x24:rate=10", "-frames:v", "10",
                    "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


class Recorder(JobEvents):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def started(self, frames: int) -> None:
        self.events.append(("started", frames))

    def frames(self, done: int, total: int) -> None:
        self.events.append(("frames", done, total))

    def step(self, step: int, steps: int, chunk: int, chunks: int) -> None:
        self.events.append(("step", step, steps, chunk, chunks))

    def warning(self, text: str) -> None:
        self.events.append(("warning", text))

    def note(self, text: str) -> None:
        self.events.append(("note", text))


def test_a_job_is_made_with_absolute_paths_and_refused_in_one_line(clip, tmp_path, monkeypatch):
    monkeypatch.chdir(clip.parent)
    job = UpscaleJob.create(clip.name, SETTINGS, FFV1)
    assert job.source == clip and job.output == clip.with_name("in.uav.mkv")
    assert job.output.is_absolute() and job.resume and job.check and job.cluster is None
    with pytest.raises(JobError, match=r"^--output .*in.mp4 is the input; choose another file$"):
        UpscaleJob.create(clip, SETTINGS, FFV1, clip)
    with pytest.raises(JobError, match=r"^input .* is a folder without videos or images; accepted: a video file"):
        UpscaleJob.create(tmp_path, SETTINGS, FFV1)
    with pytest.raises(JobError, match=r"^--no-resume: accepted: one-machine renders only"):
        UpscaleJob.create(clip, SETTINGS, FFV1, cluster=ClusterOptions("local"), resume=False)


def test_the_command_of_a_job_reads_back_as_the_same_job(clip, tmp_path):
    from vs_uav.app.cli import _resolve, build_parser

    preset = Preset("p", SETTINGS.replace(prompt="-a dash first"), FFV1)
    job = UpscaleJob.create(clip, preset.settings, preset.encoder, tmp_path / "o.mkv")
    command = job.command(preset)
    assert command == upscale_command(preset, job.source, job.output)
    import shlex

    args = build_parser().parse_args(shlex.split(command)[1:])
    assert _resolve(args, "uav upscale").values("upscale") == preset.values("upscale")


def test_a_stop_before_the_render_keeps_nothing_and_says_so(clip, tmp_path):
    stop = threading.Event()
    stop.set()  # as a signal handler would, while the source is probed
    job = UpscaleJob.create(clip, SETTINGS, FFV1, tmp_path / "o.mkv")
    with pytest.raises(JobStopped) as stopped:
        run_job(job, Recorder(), stop)
    assert stopped.value.ended == "vspipe and ffmpeg ended"
    assert stopped.value.kept == "no chunk was finished, nothing was kept: run the same command to start again"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no work folder, no partial output


def test_a_bad_cut_list_fails_before_the_model_loads(clip, tmp_path):
    cuts = tmp_path / "cuts.txt"
    cuts.write_text("4\nforty\n")
    job = UpscaleJob.create(clip, SETTINGS, EncoderSettings(codec="ffv1", scene_cuts=str(cuts)), tmp_path / "o.mkv")
    with pytest.raises(JobError, match=r"^--scene-cuts .*cuts.txt' line 2: 'forty'; accepted: one frame number"):
        run_job(job)
    assert not work_folder(tmp_path / "o.mkv").exists() and not (tmp_path / "o.mkv").exists()


@pytest.mark.slow
def test_a_job_runs_as_a_library_call_with_its_events(clip, tmp_path):
    out = tmp_path / "o.mkv"
    leftover = work_folder(out) / "job"  # what a killed run left: removed, and said
    leftover.mkdir(parents=True)
    recorder = Recorder()
    result = run_job(UpscaleJob.create(clip, SETTINGS, FFV1, out), recorder)
    assert result.output == out and result.seconds > 0 and result.summary == ""
    kinds = [e[0] for e in recorder.events]
    assert recorder.events[0] == ("note", f"removed what an earlier run that did not end cleanly left: {leftover}")
    assert recorder.events[1] == ("started", 10)  # from the probe, before any frame
    steps = [e for e in recorder.events if e[0] == "step"]
    assert steps[0][1] == 1 and steps[-1][1] == steps[-1][2] == 2 and steps[-1][3] == steps[-1][4]  # every step
    assert kinds.index("step") < kinds.index("frames")
    assert [e for e in recorder.events if e[0] == "frames"][-1] == ("frames", 10, 10)
    frames = json.loads(subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                                        "stream=nb_read_frames,width", "-of", "json", str(out)],
                                       capture_output=True, text=True, check=True).stdout)["streams"][0]
    assert (int(frames["nb_read_frames"]), frames["width"]) == (10, 128)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.mkv"]  # the work folder went with success
