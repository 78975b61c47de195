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
frame: all of :data:`vs_uav.media.encoder.CODECS` allow it), adds the source's audio, checks the
frame count against the source and removes the work folder.

Fault tolerance is Ray's: a worker that dies is restarted and its segment retried
(``max_restarts``, ``max_task_retries``); a driver that dies leaves its finished segments,
and the same command renders only the others. Ray is an optional dependency
(``pip install 'vs-uav[cluster]'``), imported only here.

Nothing is printed: progress goes to the caller's callback, the rest to logging.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence

from vs_uav.vsfilter.scenes import Segment, plan_segments

if TYPE_CHECKING:
    from vs_uav.media.encoder import EncoderSettings
    from vs_uav.media.output import OutputSpec
    from vs_uav.settings import UpscaleSettings

logger = logging.getLogger(__name__)

LOCAL = "local"
DEFAULT_SEGMENT_SECONDS = 60.0
WORK_SUFFIX = ".uav-work"
MAX_ATTEMPTS = 3  # per segment: Ray's retries after a worker died, then the driver's
WORKER_START_S = 120.0  # how long workers may take to be placed and start before the job is refused
_POLL_S = 0.5


class ClusterError(RuntimeError):
    """A cluster render that cannot go on; the message is one line naming what and why."""


def ray_available() -> Optional[str]:
    """Ray's version when it is installed, else None (``uav doctor``); imports nothing heavy."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ray")
    except PackageNotFoundError:
        return None


# -- options ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClusterOptions:
    """``--cluster``, ``--workers``, ``--segment-seconds``, ``--split-long``, ``--keep-work``."""

    address: str = LOCAL  # 'local' (a Ray instance on this machine, loopback only), HOST:PORT or ray://HOST:PORT
    workers: Optional[int] = None  # CPU workers; None: one per GPU of the cluster, else one
    segment_seconds: float = DEFAULT_SEGMENT_SECONDS
    split_long: float = 0.0  # seconds; 0: a scene is never split
    keep_work: bool = False

    def __post_init__(self) -> None:
        address = self.address.strip()
        if address != LOCAL:
            host, _, port = address.removeprefix("ray://").rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"--cluster {self.address!r}: accepted: 'local', HOST:PORT (a Ray cluster's "
                                 "address, e.g. 10.0.0.5:6379) or ray://HOST:PORT")
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 1):
            raise ValueError(f"--workers {self.workers!r}: accepted: an integer >= 1")
        for name, value, least in (("--segment-seconds", self.segment_seconds, "> 0"),
                                   ("--split-long", self.split_long, ">= 0 (0: never)")):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (value == 0 and name == "--segment-seconds"):
                shown = f"{value:g}" if isinstance(value, float) else repr(value)
                raise ValueError(f"{name} {shown}: accepted: a number of seconds {least}")

    @property
    def loopback(self) -> bool:
        """Whether the cluster is on this machine only (then Ray binds to 127.0.0.1)."""
        host = self.address.removeprefix("ray://").rpartition(":")[0].strip("[]")
        return self.address == LOCAL or host in ("127.0.0.1", "localhost", "::1")


def default_address() -> str:
    """The cluster a bare ``--cluster`` reaches: ``$RAY_ADDRESS`` (Ray's own convention) when
    set, else 'local'."""
    return os.environ.get("RAY_ADDRESS", "").strip() or LOCAL


def driver_settings(settings: "UpscaleSettings") -> "UpscaleSettings":
    """``settings`` with what this process's environment decides made explicit, for the script
    every worker runs: the model folder (``$UAV_MODEL_DIR``, else the user data folder, when not
    given) and ``cache_dir`` as absolute paths. A worker on another node has its own environment,
    home and current folder; these name the driver's (on storage every node sees)."""
    from vs_uav.weights.folder import default_model_dir
    from vs_uav.media.script import absolute

    model = absolute(settings.model or default_model_dir())
    cache = str(absolute(settings.cache_dir)) if settings.cache_dir else ""
    return settings.replace(model=str(model), cache_dir=cache)


def work_folder(output: Path) -> Path:
    """Where a cluster render of ``output`` keeps its script and segments: next to it, on the
    storage every node must see (``.out.mkv.uav-work``)."""
    output = Path(output)
    return output.with_name(f".{output.name}{WORK_SUFFIX}")


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
        _discard_unfinished(work)
        raise


def _discard_unfinished(work: Path) -> None:
    """Remove ``work`` unless it holds a finished segment (the next run resumes from those); the
    unfinished ones' files (a killed worker leaves its ``.partial`` file and ffmpeg log) go."""
    if not any(_finished_files(work)):
        shutil.rmtree(work, ignore_errors=True)
        return
    for p in work.glob("*/seg*"):
        if ".partial" in p.name or p.name.endswith(".ffmpeg.log"):
            p.unlink(missing_ok=True)


def _finished_files(work: Path) -> Iterator[Path]:
    """Segment files under their final name (only a complete, counted segment gets it)."""
    return (p for p in work.glob("*/seg*") if p.is_file() and ".partial" not in p.name and not p.name.endswith(".log"))


# -- frames and files ----------------------------------------------------------------------------

def count_frames(path: Path, ffprobe: Optional[str] = None) -> int:
    """The video frames of ``path`` (packets of its first video stream: one per frame for every
    codec vs-uav writes), or -1 when ffprobe cannot read it."""
    exe = ffprobe or shutil.which("ffprobe")
    if not exe or not Path(path).is_file():
        return -1
    run = subprocess.run([exe, "-v", "error", "-select_streams", "v:0", "-count_packets", "-show_entries",
                          "stream=nb_read_packets", "-of", "json", "file:" + os.path.abspath(path)],
                         capture_output=True, text=True)
    try:
        return int(json.loads(run.stdout)["streams"][0]["nb_read_packets"])
    except (ValueError, KeyError, IndexError, TypeError):
        return -1


def _has_audio(path: Path) -> bool:
    exe = shutil.which("ffprobe")
    if not exe:
        return False
    run = subprocess.run([exe, "-v", "error", "-select_streams", "a", "-show_entries", "stream=index", "-of", "json",
                          "file:" + os.path.abspath(path)], capture_output=True, text=True)
    try:
        return bool(json.loads(run.stdout).get("streams"))
    except ValueError:
        return False


def _one_line(text: str) -> str:
    rows = [r.strip() for r in text.strip().splitlines() if r.strip()]
    return rows[-1] if rows else ""


# -- the worker (a Ray actor) --------------------------------------------------------------------

@dataclass(frozen=True)
class SegmentTask:
    """What a worker needs to render one segment; small, sent with every call."""

    script: str  # the generated .vpy, in the work folder
    segment: Segment
    folder: str  # where the segment file goes
    suffix: str  # its extension: the output's (the muxer, and what concat reads back)
    ffmpeg_args: tuple[str, ...]  # ffmpeg's inputs and options (y4m on stdin), without program and output
    threads: int = 0  # torch and VapourSynth threads for it; 0: the worker's own


@dataclass(frozen=True)
class SegmentResult:
    segment: Segment
    path: str
    seconds: float
    node: str
    pid: int
    peak_rss: int  # bytes: the worker process's peak resident memory so far
    threads: int = 0


def segment_path(folder: Path, segment: Segment, suffix: str) -> Path:
    return Path(folder) / f"{segment.name}{suffix}"


def _task(script: str, folder: str, suffix: str, ffmpeg_args: tuple[str, ...], threads: int,
          segment: Segment) -> SegmentTask:
    return SegmentTask(script, segment, folder, suffix, ffmpeg_args, threads)


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
            logger.info("cluster: worker pid %d: warm-up failed (%s)", os.getpid(), _one_line(str(e)))

    def describe(self) -> dict[str, Any]:
        """Where this worker runs: node address, host name, process id."""
        import ray

        return {"node": ray.util.get_node_ip_address(), "host": socket.gethostname(), "pid": os.getpid(),
                "node_id": ray.get_runtime_context().get_node_id()}

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
        seg = task.segment
        self._current, self._done = seg, 0  # said from the start: loading the model is part of the work
        started = time.monotonic()
        self._warm.join()
        import resource

        import torch
        import vapoursynth as vs

        from vs_uav.vsfilter.upscale import segment
        from vs_uav.media.render import _ffmpeg_command

        threads = task.threads or self.threads
        torch.set_num_threads(threads)
        target = segment_path(Path(task.folder), seg, task.suffix)
        partial = target.with_name(f"{target.stem}.{uuid.uuid4().hex[:8]}.partial{task.suffix}")
        log = target.with_name(f"{target.stem}.ffmpeg.log")
        try:
            core = vs.core
            core.num_threads = threads
            vs.clear_outputs()
            text = Path(task.script).read_text(encoding="utf-8")
            namespace: dict[str, Any] = {"__name__": "__vapoursynth__", "__file__": task.script}
            with segment(seg.start, seg.stop):
                exec(compile(text, task.script, "exec"), namespace)  # the one-machine script, as vspipe runs it
            out = vs.get_output(0)
            clip = out.clip if hasattr(out, "clip") else out
            if not seg.stop <= clip.num_frames:
                raise ClusterError(f"segment {seg.start}-{seg.stop - 1}: the script gives {clip.num_frames} frames")
            ffmpeg = shutil.which("ffmpeg")
            if not ffmpeg:
                raise ClusterError(f"ffmpeg not found on {socket.gethostname()}; install it there")
            with open(log, "wb") as errors:
                proc = subprocess.Popen(_ffmpeg_command(ffmpeg, task.ffmpeg_args, partial), stdin=subprocess.PIPE,
                                        stdout=subprocess.DEVNULL, stderr=errors)
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
            if rc:
                said = _one_line(log.read_text(encoding="utf-8", errors="replace"))
                raise ClusterError(f"segment {seg.start}-{seg.stop - 1}: ffmpeg failed ({said or f'exit status {rc}'})")
            frames = count_frames(partial)
            if frames != seg.frames:
                raise ClusterError(f"segment {seg.start}-{seg.stop - 1}: {frames} frames written, not {seg.frames}")
            partial.replace(target)  # only a complete, counted segment carries its name
            log.unlink(missing_ok=True)
        except vs.Error as e:  # the filter's one-line error (uav.Upscale: ...)
            raise ClusterError(f"segment {seg.start}-{seg.stop - 1}: {_one_line(str(e))}") from None
        finally:
            partial.unlink(missing_ok=True)
            vs.clear_outputs()
            self._current = None
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        return SegmentResult(seg, str(target), time.monotonic() - started, socket.gethostname(), os.getpid(), peak,
                             threads)


# -- the driver ----------------------------------------------------------------------------------

@dataclass
class ClusterProgress:
    """What the driver reports about once a second: frames done (finished segments and the
    frames written of running ones), throughput of this run, ETA, busy workers."""

    done: int
    total: int
    fps: Optional[float]
    eta: Optional[float]
    busy: int
    workers: int
    segments_done: int
    segments: int

    def line(self) -> str:
        eta = "--:--" if self.eta is None else _clock(self.eta)
        fps = "-" if self.fps is None else f"{self.fps:.2f}"
        return (f"{self.done}/{self.total} frames, {fps} fps, ETA {eta}, {self.busy}/{self.workers} workers busy, "
                f"{self.segments_done}/{self.segments} segments")


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


@dataclass
class ClusterResult:
    output: Path
    frames: int
    segments: int
    resumed: int  # segments found finished in the work folder, not rendered again
    rendered: list[SegmentResult] = field(default_factory=list)
    workers: int = 0
    nodes: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        fps = sum(r.segment.frames for r in self.rendered) / self.seconds if self.seconds else 0
        return (f"{self.frames} frames in {_count(self.segments, 'segment')} ({self.resumed} already done) on "
                f"{_count(self.workers, 'worker')}, {_count(self.nodes, 'node')}, in {self.seconds:.0f} s "
                f"({fps:.2f} fps)")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


@dataclass
class ClusterJob:
    """A generated script and how its frames become ``output`` (see :func:`render_cluster`)."""

    script: Path  # the .vpy, in the work folder's job folder
    source: Path  # the audio comes from it
    video: Path  # what the script reads (the source, or its deinterlaced copy)
    output: Path
    settings: "UpscaleSettings"
    encoder: "EncoderSettings"
    spec: "OutputSpec"
    filter_file: Optional[Path] = None
    prepare: Sequence[str] = ()


def _import_ray(options: ClusterOptions):
    if options.loopback:
        # A cluster on this machine stays on the loopback interface (Ray otherwise binds to the
        # machine's network address), and sends no usage statistics. Read when Ray is imported.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if options.address == LOCAL:  # the instance we start requires Ray's token (said, so Ray does not warn)
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        import ray
    except ImportError:
        raise ClusterError("--cluster needs Ray, which is not installed; install it with "
                           "pip install 'vs-uav[cluster]' (or make setup)") from None
    return ray


def auth_token() -> str:
    """Where Ray finds this machine's authentication token, in words ('' when it has none):
    ``$RAY_AUTH_TOKEN``, the file ``$RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token`` (Ray's order)."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    path = os.path.expanduser(os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token")
    try:
        return path if Path(path).read_text(encoding="utf-8").strip() else ""
    except (OSError, UnicodeDecodeError):
        return ""


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null: Ray's C++ client logs its retries there, not to logging."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _check_answers(options: ClusterOptions) -> None:
    """A running cluster at ``options.address`` that lets this machine in, or a ClusterError
    saying what to set: a closed port or a missing token would otherwise cost ray.init 20 to 40
    s of warnings and end in "Failed to connect". A cluster with Ray's token authentication (what
    `ray start --head` turns on by default when its machine has a token) is joined with this
    machine's token: ray.init with an address never turns it on by itself, and a driver in token
    mode cannot run actors on a cluster without it, so the cluster is asked first."""
    host, _, port = options.address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise ClusterError(f"--cluster {options.address}: nothing answers there ({e.strerror or e}); accepted: the "
                           "address of a running Ray cluster (`ray start --head` prints it)") from None
    mode = os.environ.get("RAY_AUTH_MODE", "")
    if not _refused(options.address):
        return
    if not mode and auth_token():
        from ray._private.authentication.authentication_token_setup import _enable_token_auth

        _enable_token_auth()  # RAY_AUTH_MODE=token, for this process's Ray too
        if not _refused(options.address):
            return
    where = auth_token()
    has = (f"RAY_AUTH_MODE={mode} here" if mode.lower() not in ("", "token") else
           f"the token in {where} is not the cluster's" if where else "this machine has no token")
    raise ClusterError(f"--cluster {options.address}: the cluster uses Ray's token authentication and {has}; "
                       "accepted: the head's token (`ray get-auth-token` prints it there) in ~/.ray/auth_token "
                       "here, or in RAY_AUTH_TOKEN")


def _refused(address: str) -> bool:
    """Whether the cluster's GCS refuses this process's credentials (Ray's current auth mode);
    any other failure is left to ray.init, which meets it and says it."""
    from ray._raylet import GcsClient
    from ray.exceptions import AuthenticationError

    try:
        with _quiet_stderr():
            GcsClient(address=address)
    except AuthenticationError:
        return True
    except Exception:  # noqa: BLE001
        return False
    return False


@contextlib.contextmanager
def _connected(ray, options: ClusterOptions) -> Iterator[bool]:
    """Ray started (``local``) or joined; yields whether it was already up in this process."""
    if ray.is_initialized():
        yield True
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "logging_level": logging.WARNING, "configure_logging": False}
    try:
        if options.address == LOCAL:
            cpus = max(_local_cpus(), options.workers or 1)
            # address='local': a new instance, never one a previous `ray start` left running.
            ray.init(address="local", num_cpus=cpus, object_store_memory=256 * 2**20, **kwargs)
        else:
            if not options.address.startswith("ray://"):
                _check_answers(options)
            ray.init(address=options.address, **kwargs)
    except ClusterError:
        raise
    except Exception as e:  # ConnectionError, RuntimeError, ValueError: Ray's own, for any address
        what = "start" if options.address == LOCAL else "connect"
        raise ClusterError(f"--cluster {options.address}: Ray could not {what} "
                           f"({_one_line(str(e)) or type(e).__name__})") from None
    try:
        yield False
    finally:
        ray.shutdown()


def _start_delay(job: ClusterJob) -> Fraction:
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


def _local_cpus() -> int:
    """The cores this process may run on (``taskset`` and container limits count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _segment_args(job: ClusterJob) -> tuple[str, ...]:
    """ffmpeg's options for a segment: the output's, without audio (the merge adds it) and with
    timestamps from 0 (the merge offsets them by :func:`_start_delay`)."""
    from vs_uav.media.output import ffmpeg_options

    spec = replace(job.spec, media=replace(job.spec.media, times=None))
    if job.filter_file is not None and job.spec.media.times is not None:
        raise ClusterError("--cluster: a video filter this long (a file) with a delayed start is not supported; "
                           "accepted: a source starting at 0")
    return tuple(ffmpeg_options(None, job.encoder, spec, job.filter_file))


def _job_key(job: ClusterJob, ffmpeg_args: Sequence[str]) -> str:
    """What the segments depend on: the script, the encoder's options, the source file."""
    st = Path(job.source).stat()
    blob = json.dumps({"script": Path(job.script).read_text(encoding="utf-8"), "ffmpeg": list(ffmpeg_args),
                       "source": [str(job.source), st.st_size, st.st_mtime_ns], "suffix": job.output.suffix})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def find_cuts(job: ClusterJob) -> list[int]:
    """The cuts the job's script marks (:func:`vs_uav.vsfilter.scenes.cuts_of` on the clip it reads)."""
    from vs_uav.vsfilter.scenes import SceneError, cuts_of
    from vs_uav.media.script import reading_script

    import vapoursynth as vs

    namespace: dict[str, Any] = {"__name__": "__vapoursynth__"}
    try:
        exec(compile(reading_script(job.video, job.prepare), "<reading>", "exec"), namespace)
        return cuts_of(namespace["clip"], job.encoder.scene_cuts, job.encoder.scene_threshold)
    except SceneError as e:
        raise ClusterError(str(e)) from None
    except vs.Error as e:
        raise ClusterError(f"input {job.source}: scene cuts could not be found ({_one_line(str(e))})") from None


def plan(job: ClusterJob, options: ClusterOptions, cuts: Sequence[int]) -> list[Segment]:
    """The job's segments, longest first (:func:`vs_uav.vsfilter.scenes.plan_segments`)."""
    fps = float(job.spec.media.fps)
    target = max(1, round(options.segment_seconds * fps))
    split = max(1, round(options.split_long * fps)) if options.split_long else 0
    return plan_segments(cuts, job.spec.media.frames, target, split, align=job.settings.chunk_size)


def render_cluster(job: ClusterJob, options: ClusterOptions, progress: Optional[Callable[[ClusterProgress], None]]
                   = None, cancel: Optional[threading.Event] = None) -> ClusterResult:
    """Render ``job`` on a Ray cluster into ``job.output`` (see the module's description).

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
    media = job.spec.media
    work = work_folder(job.output)

    def stopped() -> bool:
        return cancel is not None and cancel.is_set()

    suffix = job.output.suffix or ".mkv"
    try:
        delay = _start_delay(job)
        ffmpeg_args = _segment_args(job)
        ray = _import_ray(options)
        segments_dir = work / _job_key(job, ffmpeg_args)
        with contextlib.ExitStack() as stack:
            actors: list[Any] = []
            if not any(_finished_files(work)):  # surely work to do: the workers warm up during the cut pass
                actors = _launch_workers(stack, ray, job, options)
            cuts = find_cuts(job)
            segments = plan(job, options, cuts)
            logger.info("cluster: %d frames, %d scene cuts, %d segments", media.frames, len(cuts), len(segments))
            segments_dir.mkdir(parents=True, exist_ok=True)
            finished = [s for s in segments if count_frames(segment_path(segments_dir, s, suffix)) == s.frames]
            todo = [s for s in segments if s not in finished]
            if finished:
                logger.info("cluster: %d of %d segments already done in %s (not rendered again)", len(finished),
                            len(segments), segments_dir)
            result = ClusterResult(job.output, media.frames, len(segments), len(finished))
            if todo:
                if stopped():
                    raise ClusterError("cancelled")
                actors = actors or _launch_workers(stack, ray, job, options)
                actors, threads = _fit_workers(ray, actors, len(segments), len(todo), options)
                where = _place_workers(ray, actors, job, options, work, result, stopped)
                task = functools.partial(_task, str(job.script), str(segments_dir), suffix, ffmpeg_args, threads)
                _Scheduler(ray, actors, task, todo, segments, finished, result, progress, stopped, where).run()
        if stopped():
            raise ClusterError("cancelled")
        _merge(job, [segment_path(segments_dir, s, suffix) for s in sorted(segments)], work, delay)
    except BaseException:
        _discard_unfinished(work)  # nothing finished: nothing left behind
        raise
    if not options.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    result.seconds = time.monotonic() - started
    return result


def _workers(ray, options: ClusterOptions, settings: Optional["UpscaleSettings"] = None) -> list[Any]:
    """The actors: one per GPU of the cluster, or ``options.workers`` CPU workers; each starts
    loading ``settings``' model at once (:class:`SegmentWorker`)."""
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


def _fit_workers(ray, actors: list[Any], segments: int, todo: int, options: ClusterOptions) -> tuple[list[Any], int]:
    """(the workers to render ``todo`` of the job's ``segments`` segments, their threads; 0: as
    they were made). Workers with no segment to render would only wait, each one's share of the
    cores wasted: they are stopped. On a local instance (all of it ours) a job of fewer segments
    than workers gives its workers the cores between them; the threads follow from the job's
    segments, not from those left, so that a resumed job renders as the first run did (float
    sums depend on the thread count). On a joined cluster each keeps the CPUs Ray reserved for it."""
    if todo >= len(actors):
        return actors, 0
    for actor in actors[todo:]:
        with contextlib.suppress(Exception):  # one already gone
            ray.kill(actor, no_restart=True)
    gpu, _, threads = _worker_plan(ray, options, min(segments, len(actors)))
    threads = threads if options.address == LOCAL and not gpu and segments < len(actors) else 0
    logger.info("cluster: %d segment%s to render for %d workers: %d worker%s, %s", todo, "s" if todo > 1 else "",
                len(actors), todo, "s" if todo > 1 else "",
                f"{threads} threads each" if threads else "each with the threads it was made with")
    return actors[:todo], threads


def _launch_workers(stack: contextlib.ExitStack, ray, job: ClusterJob, options: ClusterOptions) -> list[Any]:
    """Ray started or joined and the actors created (not waited for); both end with ``stack``:
    the actors first, then a Ray instance this call started."""
    stack.enter_context(_connected(ray, options))
    actors = _workers(ray, options, job.settings)
    logger.info("cluster: %d workers starting (each loads the model)", len(actors))

    def kill() -> None:
        for actor in actors:
            with contextlib.suppress(Exception):  # one already gone
                ray.kill(actor, no_restart=True)

    stack.callback(kill)
    return actors


def _place_workers(ray, actors: list[Any], job: ClusterJob, options: ClusterOptions, work: Path,
                   result: ClusterResult, stopped: Callable[[], bool] = lambda: False) -> list[dict[str, Any]]:
    """Wait until the actors are placed and started, each having checked that its node sees
    the work folder, the script and the source; ClusterError (nothing rendered) otherwise."""
    # Placed and started within a limit: a cluster without room for them is refused, not waited on.
    refs = [a.describe.remote() for a in actors]
    deadline = time.monotonic() + WORKER_START_S
    while True:
        _, waiting = ray.wait(refs, num_returns=len(refs), timeout=_POLL_S)
        if not waiting:
            break
        if stopped():
            raise ClusterError("cancelled")
        if time.monotonic() > deadline:
            raise ClusterError(f"--cluster {options.address}: {len(actors)} workers could not start within "
                               f"{WORKER_START_S:.0f} s (cluster resources: {ray.cluster_resources()}); accepted: "
                               "fewer --workers, or a cluster with room for them")
    where = ray.get(refs)
    result.workers, result.nodes = len(actors), len({w["node_id"] for w in where})
    for i, w in enumerate(where):
        logger.info("cluster: worker %d: pid %d on %s (%s)", i + 1, w["pid"], w["node"], w["host"])
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
    return where


class _Scheduler:
    """The driver's loop: segments to idle workers, longest first; results, retries and progress.
    Ray restarts a worker that died and retries its segment; a worker whose restarts are used up
    is dropped and its segment given to another."""

    def __init__(self, ray, actors: list[Any], task: Callable[[Segment], SegmentTask], todo: list[Segment],
                 segments: list[Segment], finished: list[Segment], result: ClusterResult,
                 progress: Optional[Callable[[ClusterProgress], None]], stopped: Callable[[], bool],
                 where: Sequence[dict[str, Any]]):
        self.ray, self.actors, self.task, self.result = ray, actors, task, result
        self.where = [dict(w) for w in where]  # each worker's node and process (describe): a new pid is a restart
        self.progress, self.stopped = progress, stopped
        self.pending = list(todo)  # longest first
        self.attempts: dict[Segment, int] = {}
        self.running: dict[Any, tuple[int, Segment]] = {}  # object ref -> (worker, segment)
        self.idle = list(range(len(actors)))
        self.total, self.segments = sum(s.frames for s in segments), len(segments)
        self.done = sum(s.frames for s in finished)  # frames in finished segments, resumed ones included
        self.resumed = len(finished)
        self.rendered = 0  # frames rendered by this run
        self.first: Optional[float] = None
        self.reported = 0.0
        self.said: set[tuple[int, Segment]] = set()  # (worker pid, segment) already logged

    def run(self) -> None:
        while self.pending or self.running:
            if self.stopped():
                raise ClusterError("cancelled")
            self._dispatch()
            ready, _ = self.ray.wait(list(self.running), num_returns=1, timeout=_POLL_S)
            for ref in ready:
                self._collect(ref)
            if not self.running and self.pending and not self.idle:
                raise ClusterError("every worker died; see the Ray logs (/tmp/ray/session_latest/logs)")
            if time.monotonic() - self.reported >= 1.0:
                self._report()

    def _dispatch(self) -> None:
        while self.idle and self.pending:
            i, seg = self.idle.pop(0), self.pending.pop(0)
            self.attempts[seg] = self.attempts.get(seg, 0) + 1
            self.running[self.actors[i].render.remote(self.task(seg))] = (i, seg)
            self.first = self.first or time.monotonic()
            logger.info("cluster: frames %d-%d to worker %d", seg.start, seg.stop - 1, i + 1)

    def _collect(self, ref) -> None:
        from ray.exceptions import RayActorError, RayTaskError

        i, seg = self.running.pop(ref)
        try:
            res: SegmentResult = self.ray.get(ref)
        except RayTaskError as e:  # the render failed: its one line, not a traceback
            cause = getattr(e, "cause", None)
            raise ClusterError(_one_line(str(cause if cause is not None else e))) from None
        except RayActorError as e:  # the worker died and Ray's restarts are used up: it is not idle again
            logger.warning("cluster: worker %d lost (%s)", i + 1, _one_line(str(e)))
            if self.attempts[seg] >= MAX_ATTEMPTS:
                raise ClusterError(f"segment {seg.start}-{seg.stop - 1}: its worker died {self.attempts[seg]} times; "
                                   "see the Ray logs (/tmp/ray/session_latest/logs)") from None
            self.pending.insert(0, seg)
            return
        self._restarted(i, res.pid, seg)
        self.result.rendered.append(res)
        self.done += seg.frames
        self.rendered += seg.frames
        self.idle.append(i)
        logger.info("cluster: frames %d-%d done by worker %d (pid %d on %s, %d thread%s) in %.1f s, peak memory "
                    "%.0f MiB", seg.start, seg.stop - 1, i + 1, res.pid, res.node, res.threads,
                    "s" if res.threads != 1 else "", res.seconds, res.peak_rss / 2**20)

    def _restarted(self, i: int, pid: int, seg: Segment) -> None:
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
        busy = list(self.running.values())
        try:
            states = self.ray.get([self.actors[i].progress.remote() for i, _ in busy], timeout=2)
        except Exception:  # a worker restarting: busy, nothing written yet
            states = []
        partial = 0
        for (i, running), (seg, written, pid) in zip(busy, states):
            self._restarted(i, pid, seg or running)
            if seg is not None:
                partial += written
                if (pid, seg) not in self.said:
                    self.said.add((pid, seg))
                    logger.info("cluster: worker %d (pid %d) rendering frames %d-%d", i + 1, pid, seg.start,
                                seg.stop - 1)
        if self.progress is None:
            return
        elapsed = now - (self.first or now)
        fps = (self.rendered + partial) / elapsed if elapsed > 1 and self.rendered + partial else None
        left = self.total - self.done - partial
        self.progress(ClusterProgress(self.done + partial, self.total, fps, left / fps if fps else None, len(busy),
                                      len(self.actors), self.resumed + len(self.result.rendered), self.segments))


def _merge(job: ClusterJob, parts: Sequence[Path], work: Path, delay: Fraction = Fraction(0)) -> None:
    """The segments joined by stream copy with the source's audio into ``job.output``, which
    appears only once its frame count is the source's."""
    from vs_uav.media.render import _ffmpeg_command
    from vs_uav.media.output import path_arg

    ffmpeg = shutil.which("ffmpeg")
    if not ffmpeg:
        raise ClusterError("ffmpeg not found; install it or run `uav doctor`")
    listing = work / "segments.txt"
    # The concat demuxer's syntax: a quote inside a quoted path is written '\''.
    listing.write_text("".join("file '" + str(p).replace("'", "'\\''") + "'\n" for p in parts), encoding="utf-8")
    offset = ["-itsoffset", f"{float(delay):.9f}"] if delay else []  # the source's first frame time
    args = [*offset, "-f", "concat", "-safe", "0", "-i", path_arg(listing, True)]
    if job.encoder.audio == "copy" and _has_audio(job.source):
        args += ["-i", path_arg(Path(job.source).absolute(), True), "-map", "0:v:0", "-map", "1:a?", "-c:a", "copy"]
    else:
        args += ["-map", "0:v:0"]
    args += ["-c:v", "copy"]
    output = Path(job.output)
    partial = output.with_name(f"{output.stem}.partial{output.suffix}")
    run = subprocess.run(_ffmpeg_command(ffmpeg, args, partial), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    try:
        if run.returncode:
            raise ClusterError(f"joining the segments failed (ffmpeg: {_one_line(run.stderr) or run.returncode})")
        frames = count_frames(partial)
        if frames != job.spec.media.frames:
            raise ClusterError(f"the joined output has {frames} frames, the source {job.spec.media.frames}; "
                               f"the segments stay in {work}")
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
