"""SIGINT, SIGTERM and SIGHUP to a real `uav upscale` in the middle of a render: vspipe and ffmpeg
(and whatever they started) end, no partial output and no script folder are left, and one
line says what was kept and how to resume; the exit status is 128 + the signal. By default the
finished chunks stay in the work folder next to the output and the same command resumes; what a
SIGKILLed run leaves is removed by the next one."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import MODEL_DIR
from test_render import UAV, env

from vs_uav.media.probe import count_frames

pytestmark = pytest.mark.slow


def descendants(pid: int) -> dict[int, str]:
    """Every live process below ``pid`` (vspipe, ffmpeg, the real vspipe behind its wrapper), with
    its command line."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            try:
                found[child] = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            todo.append(child)
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for an init that may not reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("signals") / "in.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=32x24:rate=10", "-f", "lavfi", "-i",
                    "sine=duration=3", "-frames:v", "24", "-c:a", "aac", str(path)], check=True)
    return path


# SIGINT (the default: resumable) is sent in test_a_killed_then_stopped_render_resumes_by_default below.
@pytest.mark.parametrize("sig, cache", [(signal.SIGTERM, True), (signal.SIGHUP, False)])
def test_a_signal_stops_the_render_cleans_up_and_says_so_in_one_line(tmp_path, source, sig, cache):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    output = tmp_path / "out" / "up.mkv"
    args = [UAV, "upscale", str(source), "-o", str(output), "--model", str(MODEL_DIR), "--steps", "30",
            "--chunk-size", "8", "--codec", "ffv1"]
    # An explicit --cache-dir wins over the work folder's; --no-resume keeps nothing.
    args += ["--cache-dir", str(tmp_path / "cache")] if cache else ["--no-resume"]
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, env={**env(), "TMPDIR": str(tmp)})
    try:
        deadline = time.monotonic() + 180
        while "step 2/30" not in log.read_text(errors="replace"):  # mid-render: chunk 1 is being denoised
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)
        programs = descendants(proc.pid)
        assert any("vspipe" in c for c in programs.values()) and any("ffmpeg" in c for c in programs.values()), programs
        assert (output.parent / ".up.mkv.uav-work" / "job" / "upscale.vpy").is_file()  # the script's folder
        sent = time.monotonic()
        proc.send_signal(sig)
        rc = proc.wait(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = log.read_text(errors="replace")
    assert rc == 128 + sig, stderr
    assert took < 10, took  # promptly: the model is not left to finish its chunk
    assert not proc.stdout.read()
    time.sleep(0.5)  # what the killed groups' members need to vanish from the process table
    assert not [pid for pid in programs if running(pid)], {p: c for p, c in programs.items() if running(p)}
    assert not output.exists() and not output.with_name("up.partial.mkv").exists()
    assert not output.parent.exists() or not any(output.parent.iterdir())
    # Our temporary folder is gone; torch keeps its own compile cache in TMPDIR by design.
    assert [p.name for p in tmp.iterdir() if not p.name.startswith("torchinductor_")] == []
    lines = stderr.replace("\r", "\n").splitlines()
    said = [line for line in lines if "stopped by" in line]
    assert said == [lines[-1]], stderr  # one line, the last one
    line = said[0]
    assert line.startswith(f"uav upscale: stopped by {signal.Signals(sig).name}: vspipe and ffmpeg ended, no "
                           f"partial {output} or temporary files left; "), line
    if cache:
        assert line.endswith(f"the finished chunks stay in --cache-dir {tmp_path / 'cache'}: run the same command "
                             "to resume")
        assert (tmp_path / "cache").is_dir()
    else:
        assert line.endswith("nothing was kept (--no-resume): run the same command to start again")
    # No encoder chatter, no traceback: besides the bar, only that line.
    others = [line for line in lines if line.strip() and not line.startswith(("[", "uav upscale: warning: "))
              and line not in said]
    assert others == [], others


def start(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as err:
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, env=env())


def wait_for(proc: subprocess.Popen, log: Path, text: str) -> None:
    deadline = time.monotonic() + 180
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.1)


def test_a_killed_then_stopped_render_resumes_by_default(tmp_path, source):
    output = tmp_path / "out" / "up.mkv"
    work = output.parent / ".up.mkv.uav-work"
    partial = work / "partial"  # ffmpeg writes inside the work folder: never a name of the user's
    args = [UAV, "upscale", str(source), "-o", str(output), "--model", str(MODEL_DIR), "--steps", "2",
            "--chunk-size", "16", "--codec", "ffv1", "--scene-cuts", "none"]  # 24 frames: chunks [0, 16), [16, 24)
    # 1. SIGKILL once chunk 1 is finished and its frames written: nothing of uav's cleanup runs.
    log = tmp_path / "1.txt"
    proc = start(args, log)
    try:
        wait_for(proc, log, "chunk 2/2 step 1/2")
        programs = descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (partial / "up.mkv").is_file() and (work / "job" / "upscale.vpy").is_file()  # what a killed run leaves
    assert sorted(p.name for p in output.parent.iterdir()) == [".up.mkv.uav-work"]  # nothing else beside it
    # vspipe and ffmpeg die with uav (the kernel's parent-death signal), not at their next write.
    deadline = time.monotonic() + 60
    while [pid for pid in programs if running(pid)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in programs if running(pid)], programs

    # 2. The same command: it removes those, reads chunk 1 from the cache; SIGINT during chunk 2.
    log = tmp_path / "2.txt"
    proc = start(args, log)
    try:
        wait_for(proc, log, "chunk 2/2 step 1/2 (1 chunk from the cache)")
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = log.read_text(errors="replace")
    assert rc == 130, stderr
    assert (f"uav upscale: removed what an earlier run that did not end cleanly left: {partial}, {work / 'job'}\n"
            in stderr), stderr
    last = stderr.replace("\r", "\n").splitlines()[-1]
    assert last.endswith(f"; 1 finished chunk stays in {work}: run the same command to resume"), last
    assert not partial.exists() and not output.exists()
    assert [p.name for p in work.iterdir()] == ["cache"]  # the script's folder and the lock are gone
    assert len(list(work.glob("cache/*/chunk*/state.safetensors"))) == 1

    # 3. Again: chunk 1 is not computed again, the output is complete, the work folder is gone.
    run = subprocess.run(args, capture_output=True, text=True, env=env(), timeout=300)
    assert run.returncode == 0, run.stderr
    assert "chunk 1/2 step" not in run.stderr and "chunk 1/2 from the cache" in run.stderr, run.stderr
    assert f"uav upscale: wrote {output} in " in run.stderr and "(1 of 2 chunks from the cache)" in run.stderr
    assert "removed what" not in run.stderr  # a clean stop leaves nothing to remove
    assert sorted(p.name for p in output.parent.iterdir()) == ["up.mkv"]
    assert count_frames(output) == 24
