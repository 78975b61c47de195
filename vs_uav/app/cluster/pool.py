"""Segments to workers through :class:`ray.util.ActorPool`, longest first, with the results,
the retries and the progress. The segments may belong to several jobs (the files of a queue:
one pool keeps a farm busy across them): each is a :class:`Work`, a segment of a job. Ray restarts a worker that dies and retries the segment it had
(``max_restarts``, ``max_task_retries``: see :func:`vs_uav.app.cluster.actors._workers`); only a
worker whose restarts are used up reaches the driver (``RayActorError``): it leaves the pool and
its segment goes to another."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from vs_uav.app.cluster.actors import MAX_ATTEMPTS, POLL_S
from vs_uav.app.cluster.job import ClusterProgress, ClusterResult
from vs_uav.app.cluster.options import ClusterError
from vs_uav.app.cluster.worker import SegmentResult, SegmentTask
from vs_uav.errors import one_line
from vs_uav.vsfilter.scenes import Segment

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Work:
    """Segment ``segment`` of job ``job`` (the index of its file in the pool's jobs)."""

    job: int
    segment: Segment

    @property
    def frames(self) -> int:
        return self.segment.frames

    @property
    def start(self) -> int:
        return self.segment.start

    @property
    def stop(self) -> int:
        return self.segment.stop


_RAY_LOGS = "see the Ray logs (/tmp/ray/session_latest/logs)"
PROGRESS_S = 2.0  # how long a report waits for the busy workers to say how far they are


class SegmentPool:
    """Render ``todo`` on ``actors`` (placed, described by ``where``): :meth:`run` returns when
    every segment is done, or raises ClusterError (one line)."""

    def __init__(self, ray, actors: list[Any], where: Sequence[dict[str, Any]], task: Callable[[Work], SegmentTask],
                 todo: list[Work], segments: list[Work], finished: list[Work], results: Sequence[ClusterResult],
                 progress: Optional[Callable[[ClusterProgress], None]] = None,
                 stopped: Callable[[], bool] = lambda: False):
        from ray.util import ActorPool

        self.ray, self.actors, self.task, self.results = ray, actors, task, results
        self.pool = ActorPool(actors)
        self.where = [dict(w) for w in where]  # each worker's node and process (describe): a new pid is a restart
        self.progress, self.stopped = progress, stopped
        self.pending = list(todo)  # longest first; a lost worker's segment goes first again
        self.attempts: dict[Work, int] = {}
        self.running: dict[int, tuple[Any, Work]] = {}  # worker -> (its render's object ref, segment)
        self.total, self.segments = sum(s.frames for s in segments), len(segments)
        self.done = sum(s.frames for s in finished)  # frames in finished segments, resumed ones included
        self.resumed = len(finished)
        self.rendered = 0  # frames rendered by this run
        # (when, frames) of the first report that saw frames written: the rate is measured from
        # there, so the workers' model loading (minutes on a GPU) does not make the early ETA hours.
        self.flowing: Optional[tuple[float, int]] = None
        self.reported = 0.0
        self.said: set[tuple[int, Work]] = set()  # (worker pid, segment) already logged

    def run(self) -> None:
        from ray.exceptions import RayActorError, RayTaskError

        while self.pending or self.running:
            if self.stopped():
                raise ClusterError("cancelled")
            # Submitted only to an idle worker: the pool never queues, so a lost worker can be taken out of it.
            while self.pending and self.pool.has_free():
                self.pool.submit(self._render, self.pending.pop(0))
            if not self.running:
                raise ClusterError(f"every worker died; {_RAY_LOGS}")
            try:
                self._finished(self.pool.get_next_unordered(timeout=POLL_S))
            except TimeoutError:
                pass  # nothing finished within the poll: the progress below
            except RayActorError as e:
                self._lost(e)
            except RayTaskError as e:  # the render failed: its one line, not a traceback
                cause = getattr(e, "cause", None)
                raise ClusterError(one_line(cause if cause is not None else e)) from None
            if time.monotonic() - self.reported >= 1.0:
                self._report()
        self._report()  # the last line says every segment done, not what the last report saw

    def _render(self, actor, seg: Work):
        """The pool's call: ``seg`` to ``actor``, its object ref."""
        i = self.actors.index(actor)
        self.attempts[seg] = self.attempts.get(seg, 0) + 1
        ref = actor.render.remote(self.task(seg))
        self.running[i] = (ref, seg)
        logger.info("cluster: frames %d-%d to worker %d", seg.start, seg.stop - 1, i + 1)
        return ref

    def _finished(self, res: SegmentResult) -> None:
        seg = Work(res.job, res.segment)
        i = next(i for i, (_, s) in self.running.items() if s == seg)
        del self.running[i]
        self._restarted(i, res.pid, seg)
        self.results[res.job].rendered.append(res)
        self.done += seg.frames
        self.rendered += seg.frames
        logger.info("cluster: frames %d-%d done by worker %d (pid %d on %s, %d thread%s) in %.1f s, peak memory "
                    "%.0f MiB", seg.start, seg.stop - 1, i + 1, res.pid, res.node, res.threads,
                    "s" if res.threads != 1 else "", res.seconds, res.peak_rss / 2**20)

    def _lost(self, error) -> None:
        """A worker Ray could not bring back (its restarts used up): out of the pool; its segment
        first in line for another, unless it was tried ``MAX_ATTEMPTS`` times."""
        from ray.exceptions import ActorDiedError

        i = self._worker_of(error)
        _, seg = self.running.pop(i)
        logger.warning("cluster: worker %d lost (%s)", i + 1, one_line(error))
        if isinstance(error, ActorDiedError):
            self._evict(self.actors[i])
        if self.attempts[seg] >= MAX_ATTEMPTS:
            raise ClusterError(f"segment {seg.start}-{seg.stop - 1}: its worker died {self.attempts[seg]} times; "
                               f"{_RAY_LOGS}") from None
        self.pending.insert(0, seg)

    def _worker_of(self, error) -> int:
        """The worker whose render ended in ``error``: the actor Ray names, else the running
        render that ended the same way."""
        from ray.exceptions import RayActorError, RayTaskError

        ids = [w.get("actor_id") for w in self.where]
        if error.actor_id in ids and ids.index(error.actor_id) in self.running:
            return ids.index(error.actor_id)
        for i, (ref, _) in self.running.items():
            if self.ray.wait([ref], timeout=0)[0]:
                try:
                    self.ray.get(ref, timeout=0)
                except RayActorError:
                    return i
                except RayTaskError:  # a failed render: the pool raises it next
                    continue
        raise ClusterError(f"a worker was lost and Ray does not say which ({one_line(error)}); {_RAY_LOGS}")

    def _evict(self, actor) -> None:
        """``actor`` out of the pool's idle workers (a recent Ray's ActorPool drops a dead one
        itself; an older one gives it back as idle)."""
        idle = []
        while (a := self.pool.pop_idle()) is not None:
            idle.append(a)
        for a in idle:
            if a != actor:
                self.pool.push(a)

    def _restarted(self, i: int, pid: int, seg: Any) -> None:
        """Say once (a warning) that worker ``i`` answers from another process than before: it
        died, Ray restarted it, and the segment it had is rendered again."""
        w = self.where[i]
        if pid != w["pid"]:
            logger.warning("cluster: worker %d (pid %d on %s, Ray node %s) died; Ray restarted it as pid %d, which "
                           "renders frames %d-%d again", i + 1, w["pid"], w["node"], w["node_id"][:8], pid, seg.start,
                           seg.stop - 1)
            w["pid"] = pid

    def _report(self) -> None:
        """Ask the busy workers how far they are; log what each renders; call ``progress``."""
        now = self.reported = time.monotonic()
        busy = [(i, seg) for i, (_, seg) in self.running.items()]
        partial = 0
        for (i, running), state in zip(busy, self._states([i for i, _ in busy])):
            if state is None:
                continue
            seg, written, pid = state
            self._restarted(i, pid, seg or running)
            if seg is not None:
                partial += written
                if (pid, running) not in self.said:
                    self.said.add((pid, running))
                    logger.info("cluster: worker %d (pid %d) rendering frames %d-%d", i + 1, pid, seg.start,
                                seg.stop - 1)
        if self.progress is None:
            return
        written = self.rendered + partial
        if self.flowing is None and written:
            self.flowing = (now, written)
        since, at = self.flowing or (now, written)
        fps = (written - at) / (now - since) if now - since > 1 and written > at else None
        left = self.total - self.done - partial
        done = self.resumed + sum(len(r.rendered) for r in self.results)
        self.progress(ClusterProgress(self.done + partial, self.total, fps, left / fps if fps else None, len(busy),
                                      len(self.actors), done, self.segments))

    def _states(self, workers: list[int]) -> list[Optional[tuple[Optional[Segment], int, int]]]:
        """Each worker's :meth:`SegmentWorker.progress`, None for one that does not answer within
        ``PROGRESS_S`` or died (restarting: busy, nothing written yet; said at debug level)."""
        from ray.exceptions import RayActorError

        if not workers:
            return []
        refs = [self.actors[i].progress.remote() for i in workers]
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=PROGRESS_S)
        states: list[Optional[tuple[Optional[Segment], int, int]]] = []
        for i, ref in zip(workers, refs):
            state = None
            if ref not in ready:
                logger.debug("cluster: worker %d did not say how far it is within %.0f s", i + 1, PROGRESS_S)
            else:
                try:
                    state = self.ray.get(ref)
                except RayActorError as e:  # the render's own result says what became of it
                    logger.debug("cluster: worker %d did not say how far it is (%s)", i + 1, one_line(e))
            states.append(state)
        return states
