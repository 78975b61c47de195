"""The worker: a Ray actor that holds the loaded model and renders one segment at a time by
evaluating the job's generated script with the filter restricted to the segment, piping its
frames as y4m into ffmpeg. A segment file gets its name only once ffprobe counted its frames."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from vs_uav.media.children import child_options
from vs_uav.app.cluster.options import ClusterError
from vs_uav.media.probe import count_frames
from vs_uav.app.cluster.work import segment_path
from vs_uav.errors import last_line, one_line
from vs_uav.vsfilter.scenes import Segment

if TYPE_CHECKING:
    from vs_uav.settings import UpscaleSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentTask:
    """What a worker needs to render one segment; small, sent with every call."""

    script: str  # the generated .vpy, in the work folder
    segment: Segment
    folder: str  # where the segment file goes
    suffix: str  # its extension: the output's (the muxer, and what concat reads back)
    ffmpeg_args: tuple[str, ...]  # ffmpeg's inputs and options (y4m on stdin), without program and output
    threads: int = 0  # torch and VapourSynth threads for it; 0: the worker's own
    job: int = 0  # which of the pool's jobs (the files of a queue) it belongs to


@dataclass(frozen=True)
class SegmentResult:
    segment: Segment
    path: str
    seconds: float
    node: str
    pid: int
    peak_rss: int  # bytes: the worker process's peak resident memory so far
    threads: int = 0
    job: int = 0  # the task's


def timed_args(args: Sequence[str], start: int, fps: Fraction) -> list[str]:
    """A segment's ffmpeg options with its frames timed where they stand in the whole clip
    (``-itsoffset`` on the y4m input, the times kept as they come: ``-fps_mode passthrough``).
    Each frame's time is then rounded once to the container's time base, as a one-machine render
    rounds it; a segment timed from 0 and offset at the join would round twice (Matroska's
    1 ms: frame 62 at 24 fps at 2.584 s instead of 2.583 s)."""
    if not start or not fps:
        return list(args)
    i = list(args).index("-i")  # the y4m stream on stdin, input 0
    timed = [*args[:i], "-itsoffset", f"{float(start / fps):.6f}", *args[i:]]
    return timed if "-fps_mode:v" in timed else [*timed, "-fps_mode:v", "passthrough"]


class SegmentWorker:
    """A Ray actor: holds the loaded model (the filter's per-process engine cache) and renders
    segments through the generated script, one at a time. ``progress`` may be called while
    ``render`` runs (the actor has two threads).

    It starts warming up at once: a thread of its own imports torch and VapourSynth and loads
    the model of ``settings`` (the script's), so that this overlaps the driver's scene-cut pass
    while ``describe`` and ``check`` answer; ``render`` waits for it."""

    def __init__(self, threads: int, gpu: bool, settings: Optional["UpscaleSettings"] = None):
        if not gpu:  # a CPU worker never takes a GPU it was not given: device='auto' means the CPU
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        self.threads = max(1, threads)
        self._current: Optional[Segment] = None
        self._done = 0
        self._warm = threading.Thread(target=self._warm_up, args=(settings,), name="uav-warm-up", daemon=True)
        self._warm.start()

    def _warm_up(self, settings: Optional["UpscaleSettings"]) -> None:
        """What the first segment would load, loaded now; a failure is left to ``render``, which
        meets it again and says it in one line."""
        started = time.monotonic()
        try:
            import torch
            import vapoursynth  # noqa: F401

            from vs_uav.engine.cache import engine_for

            torch.set_num_threads(self.threads)
            if settings is not None:  # the engine the script's uav.Upscale asks the same cache for
                engine_for(settings)
            logger.info("cluster: worker pid %d warmed up in %.1f s", os.getpid(), time.monotonic() - started)
        except Exception as e:  # noqa: BLE001 - said again by render
            logger.info("cluster: worker pid %d: warm-up failed (%s)", os.getpid(), one_line(e))

    def describe(self) -> dict[str, Any]:
        """Where this worker runs: node address, host name, process id, Ray's ids of node and actor."""
        import ray

        context = ray.get_runtime_context()
        return {"node": ray.util.get_node_ip_address(), "host": socket.gethostname(), "pid": os.getpid(),
                "node_id": context.get_node_id(), "actor_id": context.get_actor_id()}

    def check(self, marker: str, token: str, files: Sequence[str]) -> str:
        """"" when this node sees the work folder (the driver's ``marker`` holding ``token``) and
        ``files``; else what it does not see, in words."""
        try:
            seen = Path(marker).read_text(encoding="utf-8")
        except OSError as e:
            return f"cannot see the work folder {Path(marker).parent} ({e.strerror or e})"
        if seen != token:
            return f"sees another folder at {Path(marker).parent} (not the driver's: not shared storage)"
        for name in files:
            if not os.access(name, os.R_OK):
                return f"cannot read {name}"
        return ""

    def progress(self) -> tuple[Optional[Segment], int, int]:
        """(the segment being rendered or None, its frames written, this process's id)."""
        return self._current, self._done, os.getpid()

    def render(self, task: SegmentTask) -> SegmentResult:
        """The segment's file, written and counted; ClusterError (one line) when it cannot be."""
        import resource

        seg = task.segment
        self._current, self._done = seg, 0  # said from the start: loading the model is part of the work
        started = time.monotonic()
        self._warm.join()
        threads = task.threads or self.threads
        target = segment_path(Path(task.folder), seg, task.suffix)
        partial = target.with_name(f"{target.stem}.{uuid.uuid4().hex[:8]}.partial{task.suffix}")
        try:
            self._encode(task, threads, partial, target.with_name(f"{target.stem}.ffmpeg.log"))
            frames = count_frames(partial)
            if frames != seg.frames:
                raise ClusterError(f"segment {seg.start}-{seg.stop - 1}: {frames} frames written, not {seg.frames}")
            partial.replace(target)  # only a complete, counted segment carries its name
        finally:
            partial.unlink(missing_ok=True)
            self._current = None
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        return SegmentResult(seg, str(target), time.monotonic() - started, socket.gethostname(), os.getpid(), peak,
                             threads, task.job)

    def _encode(self, task: SegmentTask, threads: int, partial: Path, log: Path) -> None:
        """Frames ``start .. stop - 1`` of the script, as vspipe would give them, into ffmpeg
        writing ``partial``; its messages go to ``log``, kept only when it fails."""
        import torch
        import vapoursynth as vs

        from vs_uav.media.render import ffmpeg_command

        seg = task.segment
        torch.set_num_threads(threads)
        try:
            clip = _evaluate(task, threads)
            ffmpeg = shutil.which("ffmpeg")
            if not ffmpeg:
                raise ClusterError(f"ffmpeg not found on {socket.gethostname()}; install it there")
            with open(log, "wb") as errors:
                fps = Fraction(clip.fps.numerator, clip.fps.denominator) if clip.fps.denominator else Fraction(0)
                proc = subprocess.Popen(ffmpeg_command(ffmpeg, timed_args(task.ffmpeg_args, seg.start, fps), partial),
                                        stdin=subprocess.PIPE,
                                        stdout=subprocess.DEVNULL, stderr=errors, **child_options())
                try:
                    def written(done: int, total: int) -> None:
                        self._done = done

                    assert proc.stdin is not None
                    clip[seg.start:seg.stop].output(proc.stdin, y4m=True, progress_update=written)
                    proc.stdin.close()
                    rc = proc.wait()
                finally:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
        except vs.Error as e:  # the filter's one-line error (uav.Upscale: ...)
            raise ClusterError(f"segment {seg.start}-{seg.stop - 1}: {one_line(e)}") from None
        finally:
            vs.clear_outputs()
        if rc:
            said = last_line(log.read_text(encoding="utf-8", errors="replace"))
            raise ClusterError(f"segment {seg.start}-{seg.stop - 1}: ffmpeg failed ({said or f'exit status {rc}'})")
        log.unlink(missing_ok=True)


def _evaluate(task: SegmentTask, threads: int):
    """The clip of output 0 of the job's script, evaluated in this process as vspipe evaluates
    it, with the filter restricted to the task's segment."""
    import vapoursynth as vs

    from vs_uav.vsfilter.upscale import segment

    seg = task.segment
    vs.core.num_threads = threads
    vs.clear_outputs()
    text = Path(task.script).read_text(encoding="utf-8")
    namespace: dict[str, Any] = {"__name__": "__vapoursynth__", "__file__": task.script}
    with segment(seg.start, seg.stop):
        exec(compile(text, task.script, "exec"), namespace)  # the one-machine script, as vspipe runs it
    out = vs.get_output(0)
    clip = out.clip if hasattr(out, "clip") else out
    if not seg.stop <= clip.num_frames:
        raise ClusterError(f"segment {seg.start}-{seg.stop - 1}: the script gives {clip.num_frames} frames")
    return clip
