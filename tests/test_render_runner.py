"""vs_uav.media.render, the one vspipe | ffmpeg runner, with the real vspipe and ffmpeg on tiny
BlankClip scripts (no model): the partial file renamed only on success, one-line errors,
progress, logs, timeout, cancel and segments."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from vs_uav.media.render import RenderError, RenderJob, render

FFV1 = ("-i", "-", "-c:v", "ffv1")


def vpy(tmp_path: Path, body: str, name: str = "job.vpy") -> Path:
    script = tmp_path / name
    script.write_text("import vapoursynth as vs\ncore = vs.core\n" + body, encoding="utf-8")
    return script


def blank(tmp_path: Path, length: int = 10) -> Path:
    return vpy(tmp_path, f"core.std.BlankClip(width=32, height=24, length={length}, format=vs.YUV420P8, "
                         "color=[90, 120, 140]).set_output()\n")


def frames_of(path: Path) -> tuple[str, int]:
    run = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                          "stream=codec_name,nb_read_frames", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True)
    stream = json.loads(run.stdout)["streams"][0]
    return stream["codec_name"], int(stream["nb_read_frames"])


def test_a_render_writes_the_output_only_through_its_partial_file_and_reports_progress(tmp_path, capfd):
    out = tmp_path / "out dir" / "clip é.mkv"
    job = RenderJob(blank(tmp_path), out, FFV1)
    seen: list[tuple[int, int]] = []
    result = render(job, progress=lambda done, total: seen.append((done, total)))
    assert result.output == out and result.frames == 10 and result.seconds > 0
    assert seen and seen[-1] == (10, 10)  # the final count comes last
    assert sorted(p.name for p in out.parent.iterdir()) == ["clip é.mkv"]  # renamed, nothing left over
    assert frames_of(out) == ("ffv1", 10)
    assert "Script evaluation done" in result.vspipe_log and "Frame:" not in result.vspipe_log
    assert capfd.readouterr() == ("", "")  # library code prints nothing; the programs' output is collected


def test_a_failing_script_gives_one_line_and_leaves_no_file(tmp_path):
    out = tmp_path / "out.mkv"
    out.write_bytes(b"an earlier, complete render")
    script = vpy(tmp_path, "raise ValueError('broken on purpose')\n")
    with pytest.raises(RenderError) as err:
        render(RenderJob(script, out, FFV1))
    assert str(err.value) == "vspipe exited with status 1: ValueError: broken on purpose"
    assert (err.value.program, err.value.returncode) == ("vspipe", 1)
    assert out.read_bytes() == b"an earlier, complete render"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.vpy", "out.mkv"]  # no partial file


def test_an_ffmpeg_failure_names_ffmpeg_and_its_error(tmp_path):
    out = tmp_path / "out.mkv"
    with pytest.raises(RenderError) as err:
        render(RenderJob(blank(tmp_path), out, ("-i", "-", "-c:v", "no_such_codec")))
    message = str(err.value)  # later ffmpeg versions add lines of their own after the cause
    assert message.startswith("ffmpeg exited with status 1: Unknown encoder 'no_such_codec'") and "\n" not in message
    assert err.value.program == "ffmpeg"
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["job.vpy"]  # no partial folder left


def test_a_missing_program_is_named(tmp_path):
    with pytest.raises(RenderError, match=r"^cannot start vspipe \(.*No such file.*\)$"):
        render(RenderJob(blank(tmp_path), tmp_path / "out.mkv", FFV1, vspipe=str(tmp_path / "no-vspipe")))
    assert not (tmp_path / "out.mkv").exists()


def test_logs_go_to_files_in_log_dir(tmp_path):
    job = RenderJob(blank(tmp_path, 5), tmp_path / "seg.mkv", FFV1, log_dir=tmp_path / "logs")
    render(job)
    vspipe_log, ffmpeg_log = job.log_paths()
    assert vspipe_log == tmp_path / "logs" / "seg.vspipe.log" and ffmpeg_log == tmp_path / "logs" / "seg.ffmpeg.log"
    assert "Output 5 frames in" in vspipe_log.read_text() and ffmpeg_log.read_text() == ""


def test_a_segment_of_the_clip(tmp_path):
    # What a cluster worker asks for: frames 3..6 only, via vspipe's own options.
    result = render(RenderJob(blank(tmp_path), tmp_path / "seg.mkv", FFV1, vspipe_args=("--start", "3", "--end", "6")))
    assert result.frames == 4 and frames_of(result.output) == ("ffv1", 4)


def _cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def test_the_timeout_kills_both_programs_and_removes_the_partial_file(tmp_path):
    script = vpy(tmp_path, "import time\ntime.sleep(60)\n")
    out = tmp_path / "out.mkv"
    started = time.monotonic()
    with pytest.raises(RenderError, match=r"^no result after 1 s"):
        render(RenderJob(script, out, FFV1, timeout=1))
    # Both programs killed, by evidence: no process is left that names the script (no clock).
    left = [d for d in os.listdir("/proc") if d.isdigit() and str(script).encode() in _cmdline(d)]
    assert left == [], left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.vpy"]


def test_cancel_and_an_exception_from_the_callback_stop_the_render(tmp_path):
    slow = vpy(tmp_path, "import time\ntime.sleep(60)\n", "slow.vpy")
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    with pytest.raises(RenderError, match="^cancelled by the caller$"):
        render(RenderJob(slow, tmp_path / "a.mkv", FFV1), cancel=cancel)

    def stop(done: int, total: int) -> None:
        raise KeyboardInterrupt  # e.g. Ctrl-C while the bar is drawn

    with pytest.raises(KeyboardInterrupt):
        render(RenderJob(blank(tmp_path, 200), tmp_path / "b.mkv", FFV1), progress=stop)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.vpy", "slow.vpy"]
