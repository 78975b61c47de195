"""The workers' lifecycle on the driver's side: how many, made (each starts loading the model
at once), fitted to the job's segments, placed and checked (each node must see the work folder)."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from vs_uav.app.cluster.job import ClusterJob, ClusterResult
from vs_uav.app.cluster.options import LOCAL, ClusterError, ClusterOptions, connected
from vs_uav.app.cluster.worker import SegmentWorker
from vs_uav.errors import one_line

if TYPE_CHECKING:
    from vs_uav.settings import UpscaleSettings

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # per segment: Ray's retries after a worker died, then the driver's
WORKER_START_S = 120.0  # how long workers may take to be placed and start before the job is refused
POLL_S = 0.5


def _workers(ray, options: ClusterOptions, settings: Optional["UpscaleSettings"] = None) -> list[Any]:
    """The actors: one per GPU of the cluster, or ``options.workers`` CPU workers; each starts
    loading ``settings``' model at once (:class:`SegmentWorker`). A worker that dies is restarted
    by Ray and the call it had retried (``max_restarts``, ``max_task_retries``)."""
    gpu, count, threads = _worker_plan(ray, options)
    cls = ray.remote(SegmentWorker).options(num_cpus=threads, num_gpus=1 if gpu else 0, max_restarts=MAX_ATTEMPTS,
                                            max_task_retries=MAX_ATTEMPTS, max_concurrency=2)
    return [cls.remote(threads, gpu, settings) for _ in range(count)]


def _worker_plan(ray, options: ClusterOptions, count: Optional[int] = None) -> tuple[bool, int, int]:
    """(GPU workers?, how many, torch threads each): one per GPU, or ``options.workers`` CPU
    workers sharing the cluster's cores; ``count``: that many workers instead."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    gpu = options.workers is None and gpus > 0
    count = count or (gpus if gpu else options.workers or 1)
    return gpu, count, 1 if gpu else max(1, int(resources.get("CPU", 1)) // count)


def _kill(ray, actors: list[Any]) -> None:
    """The actors ended for good (no restart); one already gone is said at debug level only."""
    for actor in actors:
        try:
            ray.kill(actor, no_restart=True)
        except Exception as e:  # noqa: BLE001 - ending it is all that is wanted: gone already is fine
            logger.debug("cluster: a worker could not be ended (%s): gone already", one_line(e))


def fit_workers(ray, actors: list[Any], segments: int, todo: int, options: ClusterOptions) -> tuple[list[Any], int]:
    """(the workers to render ``todo`` of the job's ``segments`` segments, their threads; 0: as
    they were made). Workers with no segment to render would only wait, each one's share of the
    cores wasted: they are stopped. On a local instance (all of it ours) a job of fewer segments
    than workers gives its workers the cores between them; the threads follow from the job's
    segments, not from those left, so that a resumed job renders as the first run did (float
    sums depend on the thread count). On a joined cluster each keeps the CPUs Ray reserved for it."""
    if todo >= len(actors):
        return actors, 0
    _kill(ray, actors[todo:])
    gpu, _, threads = _worker_plan(ray, options, min(segments, len(actors)))
    threads = threads if options.address == LOCAL and not gpu and segments < len(actors) else 0
    logger.info("cluster: %d segment%s to render for %d workers: %d worker%s, %s", todo, "s" if todo > 1 else "",
                len(actors), todo, "s" if todo > 1 else "",
                f"{threads} threads each" if threads else "each with the threads it was made with")
    return actors[:todo], threads


def launch_workers(stack: contextlib.ExitStack, ray, job: ClusterJob, options: ClusterOptions) -> list[Any]:
    """Ray started or joined and the actors created (not waited for); both end with ``stack``:
    the actors first, then a Ray instance this call started."""
    stack.enter_context(connected(ray, options))
    actors = _workers(ray, options, job.settings)
    logger.info("cluster: %d workers starting (each loads the model)", len(actors))
    stack.callback(_kill, ray, actors)
    return actors


def place_workers(ray, actors: list[Any], jobs: Sequence[ClusterJob], options: ClusterOptions, works: Sequence[Path],
                  results: Sequence[ClusterResult], stopped: Callable[[], bool] = lambda: False
                  ) -> list[dict[str, Any]]:
    """Wait until the actors are placed and started, each having checked that its node sees
    every job's work folder (``works``), script and source; ClusterError (nothing rendered)
    otherwise. Returns each worker's :meth:`SegmentWorker.describe`."""
    # Placed and started within a limit: a cluster without room for them is refused, not waited on.
    refs = [a.describe.remote() for a in actors]
    deadline = time.monotonic() + WORKER_START_S
    while True:
        _, waiting = ray.wait(refs, num_returns=len(refs), timeout=POLL_S)
        if not waiting:
            break
        if stopped():
            raise ClusterError("cancelled")
        if time.monotonic() > deadline:
            raise ClusterError(f"--cluster {options.address}: {len(actors)} workers could not start within "
                               f"{WORKER_START_S:.0f} s (cluster resources: {ray.cluster_resources()}); accepted: "
                               "fewer --workers, or a cluster with room for them")
    where = ray.get(refs)
    for result in results:
        result.workers, result.nodes = len(actors), len({w["node_id"] for w in where})
    for i, w in enumerate(where):
        logger.info("cluster: worker %d: pid %d on %s (%s)", i + 1, w["pid"], w["node"], w["host"])
    for job, work in zip(jobs, works):
        _check_visible(ray, actors, where, job, work)
    return where


def _check_visible(ray, actors: list[Any], where: Sequence[dict[str, Any]], job: ClusterJob, work: Path) -> None:
    """Every worker sees ``work`` (a marker the driver writes there) and the job's files."""
    token = uuid.uuid4().hex
    marker = work / f".visible-{token[:8]}"
    marker.write_text(token, encoding="utf-8")
    try:
        files = [str(job.script), str(job.video), *([str(job.filter_file)] if job.filter_file else [])]
        problems = ray.get([a.check.remote(str(marker), token, files) for a in actors])
    finally:
        marker.unlink(missing_ok=True)
    for w, problem in zip(where, problems):
        if problem:
            raise ClusterError(f"--cluster: node {w['node']} ({w['host']}, Ray node {w['node_id'][:8]}) {problem}; "
                               "accepted: a work folder and source every node sees at the same path (put -o and the "
                               "input on shared storage); nothing was rendered")
