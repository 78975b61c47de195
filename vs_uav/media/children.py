"""The programs uav starts (vspipe, ffmpeg, ffprobe) end with it, even when it is killed.

One place for process-tree handling: :func:`child_options` for every ``subprocess`` call that
starts a program which may run long, :func:`kill_tree` to end one with what it started.

- Linux: the child asks the kernel for SIGKILL when uav dies (``prctl(PR_SET_PDEATHSIG)``), so
  a ``kill -9`` of uav ends vspipe and ffmpeg at once instead of leaving ffmpeg writing a file
  whose parent is gone; each child leads a process group of its own, killed as a whole.
- Other POSIX systems: a process group each (killed as a whole when uav ends them).
- Windows: a new process group each; :func:`kill_tree` ends the program itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from typing import Any, Callable, Optional

_PR_SET_PDEATHSIG = 1


def _prctl() -> Optional[Callable[..., int]]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()  # looked up before any fork: the child only calls it


def _die_with(parent: int) -> Callable[[], None]:
    def set_up() -> None:  # runs in the child between fork and exec
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # uav died before the request took effect
            os._exit(1)
    return set_up


def child_options() -> dict[str, Any]:
    """``subprocess.Popen`` keyword arguments for a program uav starts: its own process group
    (POSIX) and, on Linux, killed when uav dies. (The signal comes when the thread that started
    it ends: start programs from a thread that waits for them, as every caller here does.)"""
    if os.name != "posix":
        return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
    return {"start_new_session": True, "preexec_fn": _die_with(os.getpid())}


def kill_tree(proc: subprocess.Popen) -> None:
    """Kill ``proc`` and, on POSIX, everything it started (its process group)."""
    if os.name != "posix":
        proc.kill()
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the whole group has already exited


__all__ = ["child_options", "kill_tree"]
