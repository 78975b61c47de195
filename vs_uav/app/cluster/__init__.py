"""One long video on many GPUs and machines: scene-cut segments rendered on a Ray cluster.

``uav upscale IN -o OUT --cluster local|HOST:PORT`` writes the same ``.vpy`` as a
one-machine render into a work folder next to the output, cuts the clip into segments at
its scene cuts (:mod:`vs_uav.vsfilter.scenes`) and has Ray actors render them, one actor per GPU (or
``--workers N`` CPU workers), created before the driver's scene-cut pass so that they load
the model meanwhile. Each actor loads the model once and renders a segment by
evaluating that very script in-process with the filter restricted to the segment
(:func:`vs_uav.vsfilter.upscale.segment`, the ``ChunkDriver``'s ``start``/``stop``), piping frames
``start .. stop - 1`` as y4m into ffmpeg. A segment starts at a scene cut, where a whole
render starts cold too, so the frames are exactly a one-machine render's. Segment files are
written under a temporary name and renamed once ffprobe counted their frames; the driver
joins them with ffmpeg's concat demuxer by stream copy (every segment starts with a key
frame: all of :data:`vs_uav.media.encoder.CODECS` allow it), adds what the one-machine pipe takes
from the source (audio, subtitles, global tags: :func:`vs_uav.media.output.source_streams`), checks the
frame count against the source and removes the work folder.

Fault tolerance is Ray's: a worker that dies is restarted and its segment retried
(``max_restarts``, ``max_task_retries``); segments go to the workers through
:class:`ray.util.ActorPool`, and a worker whose restarts are used up leaves it, its segment
going to another; a driver that dies leaves its finished segments, and the same command
renders only the others. Ray is an optional dependency (``pip install 'vs-uav[cluster]'``),
imported only in this package.

The modules, each one job: :mod:`.options` (the options, Ray started or joined),
:mod:`.work` (the work folder), :mod:`.worker` (the actor), :mod:`.job` (job, progress, result), :mod:`.actors` (the workers made, fitted, placed),
:mod:`.pool` (segments to workers), :mod:`.join` (the concat join), :mod:`.driver`
(:func:`render_cluster`).

Nothing is printed: progress goes to the caller's callback, the rest to logging.
"""

from vs_uav.app.cluster.actors import MAX_ATTEMPTS, WORKER_START_S
from vs_uav.app.cluster.driver import find_cuts, plan, render_cluster, render_clusters, start_delay
from vs_uav.app.cluster.job import ClusterJob, ClusterProgress, ClusterResult
from vs_uav.app.cluster.options import (
    DEFAULT_SEGMENT_SECONDS,
    LOCAL,
    ClusterError,
    ClusterOptions,
    auth_token,
    default_address,
    driver_settings,
    local_cpus,
    ray_available,
)
from vs_uav.media.probe import count_frames
from vs_uav.app.cluster.work import WORK_SUFFIX, FolderError, job_folder, open_lock, own_folder, segment_path, work_folder
from vs_uav.app.cluster.worker import SegmentResult, SegmentTask, SegmentWorker

__all__ = [
    "FolderError", "open_lock", "own_folder",
    "DEFAULT_SEGMENT_SECONDS", "LOCAL", "MAX_ATTEMPTS", "WORKER_START_S", "WORK_SUFFIX", "ClusterError", "ClusterJob",
    "ClusterOptions", "ClusterProgress", "ClusterResult", "SegmentResult", "SegmentTask", "SegmentWorker",
    "auth_token", "count_frames", "default_address", "driver_settings", "find_cuts", "job_folder", "local_cpus",
    "plan", "ray_available", "render_cluster", "render_clusters", "segment_path", "start_delay", "work_folder",
]
