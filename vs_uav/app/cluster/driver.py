"""The driver: checks, scene cuts and segments planned, the workers started, the segments not
already finished rendered (:class:`vs_uav.app.cluster.pool.SegmentPool`), then the join."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from vs_uav.app.cluster.actors import fit_workers, launch_workers, place_workers
from vs_uav.app.cluster.job import ClusterJob, ClusterProgress, ClusterResult
from vs_uav.app.cluster.join import join_segments
from vs_uav.app.cluster.options import ClusterError, ClusterOptions, import_ray
from vs_uav.app.cluster.pool import SegmentPool, Work
from vs_uav.media.probe import count_frames
from vs_uav.app.cluster.work import discard_unfinished, finished_files, segment_path, work_folder
from vs_uav.app.cluster.worker import SegmentTask
from vs_uav.errors import one_line
from vs_uav.vsfilter.scenes import Segment, plan_segments

logger = logging.getLogger(__name__)


def start_delay(job: ClusterJob) -> Fraction:
    """Seconds from the start of the file to the first frame; ClusterError for a variable frame
    rate, whose timestamps a joining by stream copy cannot give (segments restart at 0)."""
    media = job.spec.media
    if media.times is None:
        return Fraction(0)
    first, tb = media.times[0], media.time_base
    # Each stored time is the exact one rounded to the time base (Matroska's 1 ms: 23.976 fps is
    # stored as 42/41 ms steps), and so is the first: one tick either way is still the nominal rate.
    slack = max(tb, Fraction(1, 1000))
    if media.fps and all(abs((t - first) * tb - i / media.fps) <= slack for i, t in enumerate(media.times)):
        return first * tb  # a constant rate starting after the file does: one offset for the whole video
    raise ClusterError(f"--cluster: input {job.source} has a variable frame rate; accepted: a constant-frame-rate "
                       "source (render this one without --cluster)")


def _segment_args(job: ClusterJob) -> tuple[str, ...]:
    """ffmpeg's options for a segment: the output's, without audio (the merge adds it) and with
    timestamps from 0 (the merge offsets them by :func:`start_delay`)."""
    from vs_uav.media.output import ffmpeg_options

    spec = replace(job.spec, media=replace(job.spec.media, times=None))
    if job.filter_file is not None and job.spec.media.times is not None:
        raise ClusterError("--cluster: a video filter this long (a file) with a delayed start is not supported; "
                           "accepted: a source starting at 0")
    return tuple(ffmpeg_options(None, job.encoder, spec, job.filter_file))


def _job_key(job: ClusterJob, ffmpeg_args: Sequence[str]) -> str:
    """What the segments depend on: the script, the encoder's options, the source file, the
    captions file's lines (the script names only its path)."""
    from vs_uav.media.sequence import signature

    captions = Path(job.encoder.captions).read_text(encoding="utf-8") if job.encoder.captions else ""
    blob = json.dumps({"script": Path(job.script).read_text(encoding="utf-8"), "ffmpeg": list(ffmpeg_args),
                       "source": [str(job.source), *signature(job.source)], "suffix": job.output.suffix,
                       **({"captions": captions} if captions else {})})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def find_cuts(job: ClusterJob) -> list[int]:
    """The cuts the job's script marks (:func:`vs_uav.vsfilter.scenes.cuts_of` on the clip it
    reads), numbered in the frames it outputs: an excerpt's from its first frame, found among
    its frames only."""
    import vapoursynth as vs

    from vs_uav.media.script import reading_script
    from vs_uav.vsfilter.scenes import SceneError, cuts_of

    namespace: dict[str, Any] = {"__name__": "__vapoursynth__"}
    first, end = job.frame_range or (0, None)
    try:
        exec(compile(reading_script(job.video, job.prepare), "<reading>", "exec"), namespace)
        cuts = cuts_of(namespace["clip"], job.encoder.scene_cuts, job.encoder.scene_threshold, first, end)
        return [c - first for c in cuts if c > first]
    except SceneError as e:
        raise ClusterError(str(e)) from None
    except vs.Error as e:
        raise ClusterError(f"input {job.source}: scene cuts could not be found ({one_line(e)})") from None


def plan(job: ClusterJob, options: ClusterOptions, cuts: Sequence[int]) -> list[Segment]:
    """The job's segments, longest first (:func:`vs_uav.vsfilter.scenes.plan_segments`)."""
    fps = float(job.spec.media.fps)
    target = max(1, round(options.segment_seconds * fps))
    split = max(1, round(options.split_long * fps)) if options.split_long else 0
    return plan_segments(cuts, job.spec.media.frames, target, split, align=job.settings.chunk_size)


def render_cluster(job: ClusterJob, options: ClusterOptions, progress: Optional[Callable[[ClusterProgress], None]]
                   = None, cancel: Optional[threading.Event] = None) -> ClusterResult:
    """Render ``job`` on a Ray cluster into ``job.output`` (see :mod:`vs_uav.app.cluster`).

    Cheap checks first (Ray installed, constant frame rate), then Ray is started or joined and
    the workers created, so that they load the model while this process finds the scene cuts
    and plans the segments (a resumed job, with finished segments, plans first and starts
    workers only for what is left); then every worker checks that it sees the work folder and
    the source, and the segments not already finished render, longest first. Raises
    :class:`ClusterError` (one line) on failure or when ``cancel`` is set; the finished
    segments stay for the next run. The work folder is removed after the output is verified,
    unless ``options.keep_work``.
    """
    result = render_clusters([job], options, progress, cancel)[0]
    if isinstance(result, ClusterError):
        raise result
    return result


@dataclass
class _Planned:
    """One job of a pool, planned: its segments (of that job), those finished before, the
    result so far, and what its tasks need."""

    job: ClusterJob
    work: Path
    segments_dir: Path
    suffix: str
    delay: Fraction
    ffmpeg_args: tuple[str, ...]
    segments: list[Segment] = field(default_factory=list)
    finished: list[Segment] = field(default_factory=list)
    result: Optional[ClusterResult] = None


def render_clusters(jobs: Sequence[ClusterJob], options: ClusterOptions,
                    progress: Optional[Callable[[ClusterProgress], None]] = None,
                    cancel: Optional[threading.Event] = None) -> list[ClusterResult | ClusterError]:
    """Render ``jobs`` (the files of a queue) as :func:`render_cluster` renders one, with one set
    of workers and one pool for all their segments, longest first, so that a farm stays busy
    across files. Returns each job's result, or the ClusterError of a job whose join failed; a
    failure of the pool (a render's error, every worker lost) or ``cancel`` raises ClusterError:
    the finished segments of every job stay for the next run."""
    started = time.monotonic()

    def stopped() -> bool:
        return cancel is not None and cancel.is_set()

    planned = [_checked(job) for job in jobs]
    ray = import_ray(options)
    try:
        with contextlib.ExitStack() as stack:
            actors: list[Any] = []
            if not all(any(finished_files(p.work)) for p in planned):  # work to do: warm up during the cut pass
                actors = launch_workers(stack, ray, jobs[0], options)
            for p in planned:
                p.segments, p.finished, p.result = _planned(p.job, options, p.segments_dir, p.suffix)
            _render_pool(ray, stack, actors, planned, options, progress, stopped)
        if stopped():
            raise ClusterError("cancelled")
    except BaseException:
        for p in planned:
            discard_unfinished(p.work)  # nothing finished: nothing left behind
        raise
    return [_joined(p, options, time.monotonic() - started) for p in planned]


def _checked(job: ClusterJob) -> _Planned:
    """A job's cheap checks (constant frame rate, the segments' ffmpeg options) and folders."""
    work = work_folder(job.output)
    ffmpeg_args = _segment_args(job)
    return _Planned(job, work, work / _job_key(job, ffmpeg_args), job.output.suffix or ".mkv", start_delay(job),
                    ffmpeg_args)


def _render_pool(ray, stack: contextlib.ExitStack, actors: list[Any], planned: Sequence[_Planned],
                 options: ClusterOptions, progress: Optional[Callable[[ClusterProgress], None]],
                 stopped: Callable[[], bool]) -> None:
    """The segments of every job not finished before, on the workers, longest first."""
    every = [Work(i, s) for i, p in enumerate(planned) for s in p.segments]
    finished = [Work(i, s) for i, p in enumerate(planned) for s in p.finished]
    todo = sorted((w for w in every if w not in finished), key=lambda w: (-w.frames, w.job, w.start))
    if not todo:
        return
    if stopped():
        raise ClusterError("cancelled")
    actors = actors or launch_workers(stack, ray, planned[0].job, options)
    actors, threads = fit_workers(ray, actors, len(every), len(todo), options)
    results = [p.result for p in planned]
    where = place_workers(ray, actors, [p.job for p in planned], options, [p.work for p in planned], results,
                          stopped)

    def task(w: Work) -> SegmentTask:
        p = planned[w.job]
        return SegmentTask(str(p.job.script), w.segment, str(p.segments_dir), p.suffix, p.ffmpeg_args, threads, w.job)

    SegmentPool(ray, actors, where, task, todo, every, finished, results, progress, stopped).run()


def _joined(p: _Planned, options: ClusterOptions, seconds: float) -> ClusterResult | ClusterError:
    """A job whose segments are all there, joined into its output; its work folder removed."""
    try:
        fps = p.job.spec.media.fps
        join_segments(p.job, [segment_path(p.segments_dir, s, p.suffix) for s in sorted(p.segments)], p.work,
                      p.delay, [Fraction(s.frames) / fps for s in sorted(p.segments)] if fps else [])
    except ClusterError as e:
        return e
    if not options.keep_work:
        shutil.rmtree(p.work, ignore_errors=True)
    assert p.result is not None
    p.result.seconds = seconds
    return p.result


def _planned(job: ClusterJob, options: ClusterOptions, segments_dir: Path,
             suffix: str) -> tuple[list[Segment], list[Segment], ClusterResult]:
    """(the job's segments, those a previous run finished in ``segments_dir``, the result so far)."""
    media = job.spec.media
    cuts = find_cuts(job)
    segments = plan(job, options, cuts)
    logger.info("cluster: %d frames, %d scene cuts, %d segments", media.frames, len(cuts), len(segments))
    segments_dir.mkdir(parents=True, exist_ok=True)
    finished = [s for s in segments if count_frames(segment_path(segments_dir, s, suffix)) == s.frames]
    if finished:
        logger.info("cluster: %d of %d segments already done in %s (not rendered again)", len(finished),
                    len(segments), segments_dir)
    return segments, finished, ClusterResult(job.output, media.frames, len(segments), len(finished))
