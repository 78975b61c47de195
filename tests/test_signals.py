"""SIGINT, SIGTERM and SIGHUP to a real `uav upscale` in the middle of a render: vspipe and ffmpeg
(and whatever they started) end, no partial output and no temporary folder are left, and one
line says what was kept and how to resume; the exit status is 128 + the signal."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import MODEL_DIR
from test_render import UAV, env

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


@pytest.mark.parametrize("sig, cache", [(signal.SIGINT, False), (signal.SIGTERM, True), (signal.SIGHUP, False)])
def test_a_signal_stops_the_render_cleans_up_and_says_so_in_one_line(tmp_path, source, sig, cache):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    output = tmp_path / "out" / "up.mkv"
    args = [UAV, "upscale", str(source), "-o", str(output), "--model", str(MODEL_DIR), "--steps", "30",
            "--chunk-size", "8", "--codec", "ffv1"]
    if cache:
        args += ["--cache-dir", str(tmp_path / "cache")]
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
        assert any(p.name.startswith("uav-") for p in tmp.iterdir())  # the script's temporary folder
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
        assert line.endswith("nothing was kept: run the same command to start again (with --cache-dir DIR a render "
                             "resumes where it stopped)")
    # No encoder chatter, no traceback: besides the bar, only that line.
    others = [line for line in lines if line.strip() and not line.startswith(("[", "uav upscale: warning: "))
              and line not in said]
    assert others == [], others
