"""The work folder next to the output: the job's script, its segments under their final name
only once complete, what a failed or killed run leaves for the next one to resume from."""

from __future__ import annotations

import contextlib
import re
import shutil
from pathlib import Path
from typing import Iterator

from vs_uav.vsfilter.scenes import Segment

WORK_SUFFIX = ".uav-work"


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
    work = work_folder(output)
    folder = work / "job"
    folder.mkdir(parents=True, exist_ok=True)
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
