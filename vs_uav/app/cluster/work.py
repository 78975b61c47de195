"""The work folder next to the output: the job's script, its segments under their final name
only once complete, what a failed or killed run leaves for the next one to resume from."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
from pathlib import Path
from typing import IO, Iterator

from vs_uav.errors import UavError
from vs_uav.vsfilter.scenes import Segment

WORK_SUFFIX = ".uav-work"


class FolderError(UavError, RuntimeError):
    """A work folder uav will not use (a symbolic link, another user's, not a folder); one line."""


def own_folder(path: Path) -> Path:
    """``path`` made, or checked to be a real folder of this user's, with no symbolic link
    inside it (what uav writes or removes there never lands elsewhere); FolderError otherwise."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o755)
    except FileExistsError:
        pass
    except OSError as e:
        raise FolderError(f"work folder {path}: cannot be made ({e.strerror}); accepted: a folder this user can "
                          "write") from None
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise FolderError(f"work folder {path}: {'a symbolic link' if stat.S_ISLNK(info.st_mode) else 'not a folder'}"
                          "; accepted: a folder uav made (move it away, it is not used or removed)")
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        raise FolderError(f"work folder {path}: belongs to another user (uid {info.st_uid}); accepted: one of yours "
                          "(render to another folder, or remove it as its owner)")
    for root, folders, files in os.walk(path):
        for name in folders + files:
            if os.path.islink(os.path.join(root, name)):
                raise FolderError(f"work folder {path}: holds a symbolic link {os.path.join(root, name)}; accepted: "
                                  "only what uav wrote (remove the link)")
    return path


def open_lock(path: Path) -> IO[str]:
    """The work folder's lock file, opened for writing without following a symbolic link
    (O_NOFOLLOW): a link there makes FolderError, never a write into the file it points to."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        raise FolderError(f"lock {path}: cannot be opened without following a link ({e.strerror}); accepted: a file "
                          "uav made") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FolderError(f"lock {path}: not a plain file; accepted: a file uav made")
    return os.fdopen(fd, "r+", encoding="utf-8")


def work_folder(output: Path) -> Path:
    """Where a cluster render of ``output`` keeps its script and segments: next to it, on the
    storage every node must see (``.out.mkv.uav-work``; an image sequence's ``out/%07d.tif``:
    ``out/.#.tif.uav-work``, as ffmpeg would read a ``%`` in a path it writes as a pattern)."""
    output = Path(output)
    return output.with_name(f".{re.sub(r'%0?[0-9]*d', '#', output.name)}{WORK_SUFFIX}")


@contextlib.contextmanager
def job_folder(output: Path) -> Iterator[str]:
    """The work folder's ``job`` folder, made, for the script and the files its command reads;
    when the block fails before any segment was finished, the work folder goes again."""
    work = own_folder(work_folder(output))
    folder = work / "job"
    folder.mkdir(exist_ok=True)
    try:
        yield str(folder)
    except BaseException:
        discard_unfinished(work)
        raise


def segment_path(folder: Path, segment: Segment, suffix: str) -> Path:
    """A finished segment's file: ``seg<first>-<end><suffix>`` (the name only a complete one gets)."""
    return Path(folder) / f"{segment.name}{suffix}"


def discard_unfinished(work: Path) -> None:
    """Remove ``work`` unless it holds a finished segment (the next run resumes from those); the
    unfinished ones' files (a killed worker leaves its ``.partial`` file and ffmpeg log) go."""
    if not any(finished_files(work)):
        shutil.rmtree(work, ignore_errors=True)
        return
    for p in work.glob("*/seg*"):
        if ".partial" in p.name or p.name.endswith(".ffmpeg.log"):
            p.unlink(missing_ok=True)


def finished_files(work: Path) -> Iterator[Path]:
    """Segment files under their final name (only a complete, counted segment gets it)."""
    return (p for p in work.glob("*/seg*") if p.is_file() and ".partial" not in p.name and not p.name.endswith(".log"))
