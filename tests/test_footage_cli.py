"""The command line on what real use runs into (issue 23): `-v` after the command's name,
`uav --version`, help for every `uav demo` option, and a render into an output another `uav`
is still rendering refused without touching that run's files."""

from __future__ import annotations

import fcntl
import os
import subprocess

import pytest
from conftest import MODEL_DIR
from test_render import UAV, env

from vs_uav import __version__
from vs_uav.app import cli


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("footage") / "in.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10", "-frames:v", "4",
                    str(path)], check=True)
    return path


def test_verbose_is_accepted_after_the_command_too(tmp_path, source):
    parser = cli.build_parser()
    for argv in (["-v", "doctor"], ["doctor", "-v"], ["upscale", "in.mp4", "--verbose"]):
        assert parser.parse_args(argv).verbose is True, argv
    assert parser.parse_args(["doctor"]).verbose is False
    # The real effect: INFO logging on stderr (BestSource indexing the source) from `uav script ... -v`.
    args = [UAV, "script", str(source), "-o", str(tmp_path / "o.mkv"), "--script", str(tmp_path / "s.vpy")]
    loud = subprocess.run([*args, "-v"], capture_output=True, text=True, env=env(), timeout=60)
    assert loud.returncode == 0 and "INFO " in loud.stderr, loud.stderr


def test_uav_version():
    run = subprocess.run([UAV, "--version"], capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout) == (0, f"uav {__version__}\n"), run.stderr


def test_every_option_of_every_command_has_help():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    missing = [f"uav {name} {'/'.join(action.option_strings) or action.dest}"
               for name, sub in commands.items() for action in sub._actions if not action.help]
    assert missing == []


def test_a_render_still_going_is_refused_and_its_files_are_left_alone(tmp_path, source):
    # A running `uav upscale` holds its work folder's lock (flock): here this test holds it, as
    # that process would, with its partial output and script next to it.
    output = tmp_path / "up.mkv"
    work = tmp_path / ".up.mkv.uav-work"
    (work / "job").mkdir(parents=True)
    (work / "job" / "upscale.vpy").write_text("# the running render's script\n")
    partial = tmp_path / "up.partial.mkv"
    partial.write_bytes(b"being written")
    with open(work / "lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        run = subprocess.run([UAV, "upscale", str(source), "-o", str(output), "--model", str(MODEL_DIR)],
                             capture_output=True, text=True, env=env(), timeout=60)
    assert run.returncode == 1
    assert run.stderr == (f"uav upscale: another uav (pid {os.getpid()}) is rendering {output} (its work folder "
                          f"{work} is locked); wait for it to end or stop it\n")
    assert partial.read_bytes() == b"being written" and (work / "job" / "upscale.vpy").is_file()
    assert not output.exists()
