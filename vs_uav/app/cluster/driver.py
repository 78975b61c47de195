"""The driver: checks, scene cuts and segments planned, the workers started, the segments not
already finished rendered (:class:`vs_uav.app.cluster.pool.SegmentPool`), then the join."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import shutil
import threading
import time
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from vs_uav.app.cluster.actors import fit_workers, launch_workers, place_workers
from vs_uav.app.cluster.job import ClusterJob, ClusterProgress, ClusterResult
from vs_uav.app.cluster.join import join_segments
from vs_uav.app.cluster.options import ClusterError, ClusterOptions, import_ray
from vs_uav.app.cluster.pool import SegmentPool
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
    """What the segments depend on: the script, the encoder's options, the source file."""
    from vs_uav.media.sequence import signature

    blob = json.dumps({"script": Path(job.script).read_text(encoding="utf-8"), "ffmpeg": list(ffmpeg_args),
                       "source": [str(job.source), *signature(job.source)], "suffix": job.output.suffix})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _task(script: str, folder: str, suffix: str, ffmpeg_args: tuple[str, ...], threads: int,
          segment: Segment) -> SegmentTask:
    return SegmentTask(script, segment, folder, suffix, ffmpeg_args, threads)


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
    started = time.monotonic()
    work = work_folder(job.output)

    def stopped() -> bool:
        return cancel is not None and cancel.is_set()

    suffix = job.output.suffix or ".mkv"
    try:
        delay = start_delay(job)
        ffmpeg_args = _segment_args(job)
        ray = import_ray(options)
        segments_dir = work / _job_key(job, ffmpeg_args)
        with contextlib.ExitStack() as stack:
            actors: list[Any] = []
            if not any(finished_files(work)):  # surely work to do: the workers warm up during the cut pass
                actors = launch_workers(stack, ray, job, options)
            segments, finished, result = _planned(job, options, segments_dir, suffix)
            todo = [s for s in segments if s not in finished]
            if todo:
                if stopped():
                    raise ClusterError("cancelled")
                actors = actors or launch_workers(stack, ray, job, options)
                actors, threads = fit_workers(ray, actors, len(segments), len(todo), options)
                where = place_workers(ray, actors, job, options, work, result, stopped)
                task = functools.partial(_task, str(job.script), str(segments_dir), suffix, ffmpeg_args, threads)
                SegmentPool(ray, actors, where, task, todo, segments, finished, result, progress, stopped).run()
        if stopped():
            raise ClusterError("cancelled")
        join_segments(job, [segment_path(segments_dir, s, suffix) for s in sorted(segments)], work, delay)
    except BaseException:
        discard_unfinished(work)  # nothing finished: nothing left behind
        raise
    if not options.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    result.seconds = time.monotonic() - started
    return result


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
