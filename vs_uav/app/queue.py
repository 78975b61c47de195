"""Many sources, one job: ``uav upscale a.mp4 b.mkv reels/ 'scans/*.mov' -o out/``.

:func:`plan_queue` expands the inputs (files, folders of videos, glob patterns) into one
:class:`~vs_uav.app.job.UpscaleJob` each, their outputs in one folder (each named after its
source, ``clip.uav.mkv``) or named by a pattern (``out/{stem}.mkv``). :func:`run_queue` then:

1. checks every job before the first render (:func:`~vs_uav.app.job.check_job`: the probe, the
   cut list, the cheap checks), so that a bad file is reported in the first seconds, not forty
   minutes into the queue;
2. skips the outputs an earlier run of the same queue finished and verified (a record beside
   each output names its source, its settings and the file it wrote);
3. renders the others one after the other (:func:`~vs_uav.app.job.run_job`); a file that fails
   is reported and the next one renders all the same; on a cluster the segments of all of them
   go into one pool, longest first (:func:`~vs_uav.app.job.run_jobs_on_cluster`), and a render
   error there fails the files not yet joined (their finished segments stay);
4. returns what happened (:class:`QueueResult`).

A stop ends the queue where it is (:class:`~vs_uav.app.job.JobStopped`); the files finished
before it keep their records, so the same command goes on with the rest.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from vs_uav.app.job import JobError, JobEvents, JobResult, UpscaleJob, check_job, check_output_free, run_job
from vs_uav.media.sequence import is_sequence, signature

if TYPE_CHECKING:
    from vs_uav.media.encoder import EncoderSettings
    from vs_uav.settings import UpscaleSettings

# What a folder given as an input contributes: its video files (not recursively), without the
# files vs-uav writes there itself (outputs named *.uav.*, partial files, hidden work folders).
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".m4v", ".avi", ".webm", ".mxf", ".m2ts", ".mts", ".ts", ".mpg",
                  ".mpeg", ".wmv", ".flv", ".y4m")

_GLOB = set("*?[")


class QueueEvents(JobEvents):
    """A queue's events: each file's :class:`JobEvents` plus where the queue is."""

    def checked(self, job: UpscaleJob, index: int, total: int, error: str) -> None:
        """A job was checked before the renders ("" when it can be rendered)."""

    def skipped(self, job: UpscaleJob) -> None:
        """A verified output of an earlier run of the same job: not rendered again."""

    def file(self, job: UpscaleJob, index: int, total: int) -> None:
        """The render of the ``index``-th file (from 1) of ``total`` begins."""

    def failed(self, job: UpscaleJob, error: str) -> None:
        """A render failed (one line); the queue goes on."""

    def finished(self, job: UpscaleJob, result: JobResult) -> None:
        """A render finished, its output verified and recorded."""


@dataclass
class QueueResult:
    jobs: int
    done: list[JobResult] = field(default_factory=list)
    failed: list[tuple[UpscaleJob, str]] = field(default_factory=list)
    skipped: list[UpscaleJob] = field(default_factory=list)
    frames: int = 0  # frames rendered by this run
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        files = f"{self.jobs} file{'s' if self.jobs != 1 else ''}"
        return (f"{files}: {len(self.done)} done, {len(self.failed)} failed, {len(self.skipped)} skipped "
                f"(finished before); {self.frames} frame{'s' if self.frames != 1 else ''} in {self.seconds:.0f} s")


# -- planning ------------------------------------------------------------------------------------

def expand_sources(inputs: Sequence[str]) -> list[Path]:
    """The files ``inputs`` name, in order, each once: a file as it is, a folder's video files
    (sorted by name), a glob pattern's matches (sorted). JobError for a pattern that matches
    nothing or a folder without videos; a missing plain file is left for the job to refuse."""
    found: list[Path] = []
    for given in inputs:
        path = Path(given).expanduser()
        if path.is_dir():
            videos = [path] if _frames_only(path) else sorted(p for p in path.iterdir() if p.is_file()
                                                              and _is_source(p))
            if not videos:
                from vs_uav.media.probe import image_sequence_hint

                raise JobError(f"input {path} is a folder without videos; accepted: a video file or a folder of "
                               f"them ({', '.join(VIDEO_SUFFIXES[:4])}, ...) {image_sequence_hint(path)}")
            found += videos
        elif not path.exists() and _GLOB & set(given):
            matches = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
            if not matches:
                raise JobError(f"input {given!r} matches no file")
            found += matches
        else:
            found.append(path)
    seen: set[Path] = set()
    return [p for p in found if not (p.resolve() in seen or seen.add(p.resolve()))]


def _is_source(path: Path) -> bool:
    name = path.name.lower()
    return (path.suffix.lower() in VIDEO_SUFFIXES and not name.startswith(".") and ".uav." not in name
            and ".partial." not in name)


def is_queue(inputs: Sequence[str], output: Optional[str]) -> bool:
    """Whether ``inputs`` and ``-o`` ask for a queue rather than one file into one output."""
    path = Path(inputs[0]).expanduser()
    if len(inputs) != 1 or (path.is_dir() and not _frames_only(path)):
        return True
    if not Path(inputs[0]).expanduser().exists() and _GLOB & set(inputs[0]):
        return True
    return output is not None and ("{" in output or _output_folder(output) is not None)


def _frames_only(folder: Path) -> bool:
    """A folder of an image sequence's frames, without videos: one source, not a queue."""
    return is_sequence(folder) and not any(p.is_file() and _is_source(p) for p in folder.iterdir())


def _output_folder(output: str) -> Optional[Path]:
    """The folder ``-o`` names for a queue, or None when it names one file."""
    path = Path(output).expanduser()
    if "{" in output:
        return None
    if path.is_dir() or output.endswith(("/", "\\")) or not path.suffix:
        return path
    return None


def output_of(source: Path, output: Optional[str], encoder: "EncoderSettings") -> Optional[Path]:
    """Where ``source``'s render goes: next to it (None), in the folder ``output`` names (as
    ``clip.uav.mkv``), or where the pattern ``output`` says (``{stem}``: the source's name
    without its extension, ``{name}``: with it)."""
    from vs_uav.app.plan import default_output

    if output is None:
        return None
    if "{" in output:
        return _patterned(output, source)
    folder = _output_folder(output)
    if folder is None:
        raise JobError(f"--output {output}: several sources need a folder or a pattern with {{stem}}, e.g. "
                       f"{Path(output).parent / '{stem}'}{Path(output).suffix}")
    return folder / default_output(source, encoder).name


def check_output_pattern(output: str) -> None:
    """JobError in one line unless ``output``'s ``{...}`` fields are ``{stem}`` or ``{name}``
    exactly (no attribute, index, conversion or format spec: ``{stem.x}``, ``{stem:>300}``)."""
    import string

    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(output) if f is not None]
    except ValueError:
        fields = [("?", "", None)]
    if not fields or any(f not in ("stem", "name") or spec or conv for f, spec, conv in fields):
        raise JobError(f"--output {output!r}: accepted: a folder, or a pattern with {{stem}} (the source's name "
                       "without its extension) or {name} and no other {...}, e.g. out/{stem}.mkv")


def _patterned(output: str, source: Path) -> Path:
    """The output ``output``'s pattern names for ``source``, kept inside the folder the pattern
    starts with (a source named ``...mkv`` has the stem ``..``)."""
    check_output_pattern(output)
    path = Path(os.path.normpath(os.path.expanduser(output.format(stem=source.stem, name=source.name))))
    fixed = Path(os.path.normpath(os.path.expanduser(output.split("{", 1)[0] + "x"))).parent
    if not path.is_relative_to(fixed) or path == fixed or ".." in path.relative_to(fixed).parts:
        raise JobError(f"--output {output!r}: {source.name!r} would be written to {path}, outside {fixed}; "
                       "accepted: a source whose name keeps it there (rename it), or another pattern")
    return path


def plan_queue(inputs: Sequence[str], settings: "UpscaleSettings", encoder: "EncoderSettings",
               output: Optional[str] = None, **options: Any) -> list[UpscaleJob]:
    """One job per source (:func:`expand_sources`), each output where :func:`output_of` says;
    JobError in one line for outputs two sources would share or that are another's source."""
    sources = expand_sources(inputs)
    if encoder.captions and len(sources) > 1:
        raise JobError(f"--captions {encoder.captions}: accepted for one source (its scenes' frames); a queue's "
                       "files each get their own with --prompt auto, next to each output")
    jobs = [UpscaleJob.create(src, settings, encoder, output_of(src, output, encoder), **options) for src in sources]
    written: dict[Path, UpscaleJob] = {}
    reads = {job.source.resolve(): job for job in jobs}
    for job in jobs:
        out = job.output.resolve()
        if out in written:
            raise JobError(f"--output: {written[out].source} and {job.source} would both be written to {job.output}; "
                           "accepted: sources with different names, or a pattern that tells them apart")
        if out in reads:
            raise JobError(f"--output: {job.output} is written from {job.source} but is a source of the queue too")
        written[out] = job
    return jobs


# -- the record of a finished output ---------------------------------------------------------------

def record_path(output: Path) -> Path:
    """Beside the output: ``.clip.uav.mkv.uav-done.json``."""
    return output.with_name(f".{output.name}.uav-done.json")


def _fingerprint(job: UpscaleJob) -> dict:
    return {"source": [str(job.source), *signature(job.source)],
            "settings": dataclasses.asdict(job.settings), "encoder": dataclasses.asdict(job.encoder),
            "deinterlace": job.deinterlace, "prepare": list(job.prepare),
            "frame_range": list(job.frame_range) if job.frame_range else None, "captions": _captions_digest(job)}


def _captions_digest(job: UpscaleJob) -> Optional[str]:
    """The captions file's lines (the encoder names only its path): an edited file renders again."""
    import hashlib

    path = Path(job.encoder.captions) if job.encoder.captions else None
    if path is None or not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_record(job: UpscaleJob, frames: int) -> None:
    record = {**_fingerprint(job), "output": signature(job.output), "frames": frames}
    path = record_path(job.output)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, sort_keys=True, default=str), encoding="utf-8")
    tmp.replace(path)


def finished_before(job: UpscaleJob) -> bool:
    """Whether the output is the one an earlier run of this very job wrote and verified: its
    record names the same source (size and time), settings and encoder, and the file is as it
    was written (size and time)."""
    try:
        record = json.loads(record_path(job.output).read_text(encoding="utf-8"))
        written = signature(job.output)
    except (OSError, ValueError):
        return False
    expected = json.loads(json.dumps(_fingerprint(job), sort_keys=True, default=str))
    return all(record.get(k) == v for k, v in expected.items()) and record.get("output") == written


# -- running -------------------------------------------------------------------------------------

def run_queue(jobs: Sequence[UpscaleJob], events: Optional[QueueEvents] = None,
              stop: Optional[threading.Event] = None) -> QueueResult:
    """The steps in the module's docstring. JobStopped when ``stop`` is set (what the files
    finished so far keep is in their records)."""
    events = events or QueueEvents()
    stop = stop or threading.Event()
    started, result = time.monotonic(), QueueResult(len(jobs))
    frames = _check_all(jobs, events, result)  # 1. (the frames of each job that can be rendered)
    todo = []
    for i, job in enumerate(jobs):
        if i in frames and finished_before(job):  # 2.
            result.skipped.append(job)
            events.skipped(job)
        elif i in frames:
            todo.append(i)
    if len(todo) > 1 and all(jobs[i].cluster is not None for i in todo):  # 3. one pool for every file
        _render_pooled(jobs, todo, frames, events, stop, result)
        todo = []
    for i in todo:  # 3. (each file numbered by its place in the queue, as when it was checked)
        job = jobs[i]
        events.file(job, i + 1, len(jobs))
        try:
            done = run_job(dataclasses.replace(job, check=False), events, stop)
        except JobError as e:
            result.failed.append((job, str(e)))
            events.failed(job, str(e))
            continue
        _finish(job, done, frames[i], result, events)
    result.seconds = time.monotonic() - started
    return result  # 4.


def _render_pooled(jobs: Sequence[UpscaleJob], todo: Sequence[int], frames: dict[int, int], events: QueueEvents,
                   stop: threading.Event, result: QueueResult) -> None:
    """Step 3 on a cluster: the files' segments in one pool (run_jobs_on_cluster), each file
    then recorded or failed as one rendered alone is."""
    from vs_uav.app.job import run_jobs_on_cluster

    for i in todo:
        events.file(jobs[i], i + 1, len(jobs))
    outcomes = run_jobs_on_cluster([dataclasses.replace(jobs[i], check=False) for i in todo], events, stop)
    for i, outcome in zip(todo, outcomes):
        if isinstance(outcome, JobError):
            result.failed.append((jobs[i], str(outcome)))
            events.failed(jobs[i], str(outcome))
        else:
            _finish(jobs[i], outcome, frames[i], result, events)


def _check_all(jobs: Sequence[UpscaleJob], events: QueueEvents, result: QueueResult) -> dict[int, int]:
    """Step 1: the frames each job's output will hold, by the job's index; a job that cannot be
    rendered is failed."""
    frames = {}
    for index, job in enumerate(jobs):
        try:
            if not finished_before(job):  # (a finished one is skipped, not refused)
                check_output_free(job)
            frames[index] = check_job(job)
        except JobError as e:
            result.failed.append((job, str(e)))
            events.checked(job, index + 1, len(jobs), str(e))
            continue
        events.checked(job, index + 1, len(jobs), "")
    return frames


def _finish(job: UpscaleJob, done: JobResult, frames: int, result: QueueResult, events: QueueEvents) -> None:
    """A rendered output: recorded when the job verified its frames (RunFolder.verify, the
    cluster's join), else failed."""
    if not done.verified:
        said = f"{job.output} does not hold the frames vspipe wrote: not recorded as finished"
        result.failed.append((job, said))
        events.failed(job, said)
        return
    _write_record(job, frames)
    result.done.append(done)
    result.frames += frames
    events.finished(job, done)
