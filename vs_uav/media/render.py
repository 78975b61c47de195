"""The one vspipe | ffmpeg runner: a ``.vpy``'s frames encoded into one file.

Used by ``uav upscale``, ``uav demo`` and ``uav selftest``; made to be reused by any caller
that encodes a script (a cluster worker encoding a segment, a GUI)::

    job = RenderJob(Path("clip.vpy"), Path("clip.mkv"), ffmpeg_options(source, encoder))
    result = render(job, progress=lambda done, total: ...)

What it guarantees:

- vspipe's progress (``Frame: N/M``, ``Output N frames in``) goes to the ``progress``
  callback, ``uav.Upscale``'s step progress (:data:`STEP_PROGRESS`, one line per denoising
  step) to ``step_progress`` and vspipe's warnings to ``warning``, all in the caller's
  thread; nothing is printed (library code never writes to stdout). :class:`ProgressClock`
  turns them into an ETA.
- Both programs' stderr are collected (files in ``log_dir``, else memory and a temporary
  file), so no pipe fills up and blocks a process.
- ffmpeg writes into a folder of this render's own (:attr:`RenderJob.partial_dir`, else a new
  hidden ``.uav-partial-XXXXXXXX`` next to the output), renamed to the output only when both
  programs succeeded; on any failure, timeout, cancel or exception the processes are killed
  and that folder removed: a file with the output's name is always complete, and no file of
  the user's is ever written or removed.
- A failure raises :class:`RenderError` with one line: vspipe's last error line, or ffmpeg's.

Imports no torch and no VapourSynth (vspipe runs the script in its own process).
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import contextlib
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Mapping, Optional, Sequence

from vs_uav.errors import UavError
from vs_uav.media.children import child_options, kill_tree
from vs_uav.media.output import find_vspipe, path_arg, vspipe_args
from vs_uav.media.sequence import is_pattern

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""``progress(done, total)``: frames written so far and the clip's length."""
StepProgress = Callable[[int, int, int, int], None]
"""``step_progress(step, steps, chunk, chunks)``: denoising step ``step`` of ``steps`` of chunk
``chunk`` of ``chunks`` (both counted from 1) is done; the chunk driver's progress."""

# What uav.Upscale writes to VapourSynth's log after every denoising step (vspipe prints it
# on stderr as "Information: uav.Upscale: progress chunk 1/4 step 3/30"); parsed below.
_STEP = re.compile(rb"uav\.Upscale: progress chunk (\d+)/(\d+) step (\d+)/(\d+)")
# What it writes for a chunk read from the disk cache (vs_uav.engine.driver.CACHED_CHUNK).
_CACHED = re.compile(rb"uav\.Upscale: chunk (\d+)/(\d+) \(frames \d+-\d+\) read from ")
_WARNING = re.compile(rb"^Warning: (.*)")
_FRAME = re.compile(rb"Frame: (\d+)/(\d+)")
_ENCODER_CHATTER = re.compile(r"^(\w+ \[(info|warning)\]|encoded \d+ frames)")
_MUXER_TAG = re.compile(r"^\[[^\]]* @ 0x[0-9a-f]+\] ")  # "[mp4 @ 0x55...] " before a muxer's message
_DONE = re.compile(rb"Output (\d+) frames in")  # vspipe's last line; its progress lines are rate-limited
_KEEP_LINES = 200  # vspipe log lines kept in memory: a traceback's end is what tells
_POLL_S = 0.2  # how often timeout, cancel and an early ffmpeg exit are checked


class RenderError(UavError, RuntimeError):
    """A render that failed; the message is one line (which program, its status, its error).

    ``program`` is "vspipe", "ffmpeg" or "" (timeout, cancel, nothing written); ``returncode``
    that program's exit status when it has one.
    """

    def __init__(self, message: str, program: str = "", returncode: Optional[int] = None):
        super().__init__(message)
        self.program, self.returncode = program, returncode


PARTIAL_PREFIX = ".uav-partial-"


def partial_folder(output: Path) -> Path:
    """A new, empty, hidden folder next to ``output`` made for this render alone
    (``.uav-partial-XXXXXXXX``, created exclusively: never a name a user's file has), where
    ffmpeg writes until the render succeeded; a job's work folder brings its own instead
    (:attr:`RenderJob.partial_dir`)."""
    parent = Path(output).parent
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=parent))


def _publish(partial: Path, output: Path) -> None:
    """The complete partial output gets the output's name (an image sequence's frames theirs)."""
    if not is_pattern(partial):
        partial.replace(output)
        return
    for frame in sorted(partial.parent.iterdir()):
        frame.replace(output.parent / frame.name)


def _discard(folder: Path) -> None:
    """The partial folder, and only what ffmpeg wrote into it, goes (a folder of this render's)."""
    if folder.is_symlink() or not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.is_file() or p.is_symlink():
            p.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()


def _has_data(partial: Path) -> bool:
    if is_pattern(partial):
        return partial.parent.is_dir() and any(f.stat().st_size for f in partial.parent.iterdir())
    return partial.is_file() and partial.stat().st_size > 0


@dataclass
class RenderJob:
    """One vspipe | ffmpeg run: the frames of ``script`` encoded into ``output``."""

    script: Path
    output: Path
    # ffmpeg's inputs and options between the program and the output file; y4m arrives on
    # stdin, e.g. ('-i', '-', '-c:v', 'ffv1') or script.ffmpeg_options(source, encoder).
    ffmpeg_args: Sequence[str]
    # Extra vspipe options before the script, e.g. ('--start', '100', '--end', '199') for a segment.
    vspipe_args: Sequence[str] = ()
    env: Optional[Mapping[str, str]] = None  # both processes' environment; None: this process's
    timeout: Optional[float] = None  # seconds for the whole render; None: no limit
    # Where <output stem>.vspipe.log and .ffmpeg.log are written and kept; None: in memory only.
    log_dir: Optional[Path] = None
    vspipe: Optional[str] = None  # executables; None: vspipe next to this Python, then PATH
    ffmpeg: Optional[str] = None
    # Where ffmpeg writes until the render succeeded (the output's name inside it): a folder of
    # the caller's own (a job's work folder); None: a new one next to the output (partial_folder).
    partial_dir: Optional[Path] = None

    def log_paths(self) -> Optional[tuple[Path, Path]]:
        """The vspipe and ffmpeg log files, when ``log_dir`` is set."""
        if self.log_dir is None:
            return None
        stem = Path(self.output).stem
        return Path(self.log_dir) / f"{stem}.vspipe.log", Path(self.log_dir) / f"{stem}.ffmpeg.log"


@dataclass
class RenderResult:
    """A finished render: the complete output file and what the programs said."""

    output: Path
    frames: int  # frames vspipe wrote
    seconds: float
    vspipe_log: str  # vspipe's messages without its progress lines (the last ones when long)
    ffmpeg_log: str


def steps_left(step: int, steps: int, chunk: int, chunks: int) -> int:
    """Denoising steps still to run after step ``step`` of chunk ``chunk`` (both from 1)."""
    return (steps - step) + (chunks - chunk) * steps


class ProgressClock:
    """Elapsed time, ETA and what is happening in a render, from the callbacks of :func:`render`.

    With step progress, the ETA is the measured seconds per denoising step (from the first
    step seen to the latest, so model loading and chunks read from a cache do not count)
    times the steps left in this chunk and the chunks after it that are not read from the
    cache (each at the fewest steps a chunk had: a chunk split by scene cuts counts its steps
    over its pieces); a chunk's decoding falls between its last step and the next chunk's
    first, so it is averaged in. Without it (no step seen yet, or a render of cached chunks),
    the seconds per frame measured from the first frames written on (not from the start: the
    model's loading is not a frame's cost) times the frames left.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.started = clock()
        self.done = self.total = 0  # frames
        self.step: Optional[tuple[int, int, int, int]] = None  # (step, steps, chunk, chunks), the latest
        self.cached: set[int] = set()  # chunks (counted from 1) read from the disk cache
        self.chunks = 0
        self._first_step = self._last_step = 0.0
        self._steps_seen = 0
        self._fewest_steps = 0  # the fewest steps a chunk had (one without scene cuts)
        self._first_frames: Optional[tuple[float, int]] = None  # (when, frames done) of the first frames

    def frames(self, done: int, total: int) -> None:
        if done and self._first_frames is None:
            self._first_frames = (self.clock(), done)
        self.done, self.total = done, total or self.total

    def on_step(self, step: int, steps: int, chunk: int, chunks: int) -> None:
        now = self.clock()
        if not self._steps_seen:
            self._first_step = now
        self._steps_seen += 1
        self._last_step = now
        self.step, self.chunks = (step, steps, chunk, chunks), chunks
        self._fewest_steps = min(self._fewest_steps or steps, steps)

    def on_cached(self, chunk: int, chunks: int) -> None:
        """Chunk ``chunk`` of ``chunks`` was read from the disk cache (nothing computed)."""
        self.cached.add(chunk)
        self.chunks = chunks

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def phase(self) -> str:
        """What the render is doing, in words: 'loading the model' before anything arrived,
        'chunk 3/4 step 2/30 (2 chunks from the cache)', 'chunk 2/4 from the cache'."""
        cached = len(self.cached)
        from_cache = f"{cached} chunk{'s' if cached > 1 else ''} from the cache"
        if self.step is not None:
            step, steps, chunk, chunks = self.step
            return f"chunk {chunk}/{chunks} step {step}/{steps}" + (f" ({from_cache})" if cached else "")
        if cached:
            return f"chunk {max(self.cached)}/{self.chunks} from the cache" + \
                (f" ({from_cache})" if cached > 1 else "")
        return "" if self.done else "loading the model"

    def seconds_per_step(self) -> Optional[float]:
        if self._steps_seen < 2:
            return None
        return (self._last_step - self._first_step) / (self._steps_seen - 1)

    def eta(self) -> Optional[float]:
        """Seconds left, or None while nothing has been measured."""
        rate = self.seconds_per_step()
        if rate is not None and self.step is not None:  # counting down since the latest step
            step, steps, chunk, chunks = self.step
            later = chunks - chunk - len([c for c in self.cached if c > chunk])
            left = (steps - step) + later * self._fewest_steps
            eta = rate * left - (self.clock() - self._last_step)
            if eta > 0 or self.done >= self.total:
                return max(0.0, eta)
            # Every step is done but frames are still being decoded and written (a long last
            # chunk, a slow source): never 00:00 while frames remain; by the frames, or unknown.
            return self._by_frames()
        return self._by_frames()

    def _by_frames(self) -> Optional[float]:
        """Seconds left at the seconds per frame measured since the first frames, or None."""
        if self._first_frames is not None and self.total:
            since, first = self._first_frames
            if self.done > first:
                return (self.clock() - since) / (self.done - first) * (self.total - self.done)
        return None


def render(job: RenderJob, progress: Optional[Progress] = None,
           cancel: Optional[threading.Event] = None, step_progress: Optional[StepProgress] = None,
           warning: Optional[Callable[[str], None]] = None,
           cached: Optional[Callable[[int, int], None]] = None) -> RenderResult:
    """Run ``job``: vspipe -c y4m into ffmpeg, the output renamed into place only on success.

    ``progress(done, total)`` is called in this thread as vspipe reports frames, last with
    the final count; ``step_progress(step, steps, chunk, chunks)`` after every denoising
    step ``uav.Upscale`` reports; ``cached(chunk, chunks)`` for each chunk it reads from its
    disk cache; ``warning(text)`` with each warning vspipe prints. An
    exception a callback raises stops the render (and propagates). Setting ``cancel`` stops
    it too (within a fraction of a second: both programs' process groups are killed), with
    a :class:`RenderError`. Raises :class:`RenderError` (one line) when a program is missing,
    fails or the timeout passes; the output is then untouched and no partial file is left.
    """
    vspipe, ffmpeg = _programs(job)
    output = Path(job.output)
    folder = Path(job.partial_dir) if job.partial_dir is not None else partial_folder(output)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / output.name
    vspipe_cmd = vspipe_args(Path(job.script), vspipe, progress=True, options=job.vspipe_args)
    ffmpeg_cmd = ffmpeg_command(ffmpeg, job.ffmpeg_args, partial)
    env = dict(job.env) if job.env is not None else None
    logger.debug("render: %s | %s", shlex.join(vspipe_cmd), shlex.join(ffmpeg_cmd))

    started = time.monotonic()
    deadline = started + job.timeout if job.timeout is not None else None
    procs: list[subprocess.Popen] = []
    reader: Optional[_VspipeReader] = None
    done = False
    with ExitStack() as stack:
        logs = job.log_paths()
        if logs is not None:
            Path(job.log_dir).mkdir(parents=True, exist_ok=True)  # type: ignore[arg-type]
        vspipe_log = stack.enter_context(open(logs[0], "wb")) if logs else None
        ffmpeg_log = stack.enter_context(open(logs[1], "w+b") if logs else tempfile.TemporaryFile())
        try:
            pipe, enc = _start_pair(vspipe_cmd, ffmpeg_cmd, ffmpeg_log, env, procs)
            assert pipe.stderr is not None
            reader = _VspipeReader(pipe.stderr, vspipe_log)
            check_limits = _limits(cancel, deadline, job.timeout, reader)
            _pump(reader, {"frames": progress, "step": step_progress, "warning": warning, "cached": cached},
                  check_limits, pipe, enc)
            ffmpeg_text = _finish(reader, pipe, enc, deadline, check_limits, ffmpeg_log, partial)
            _publish(partial, output)  # only a complete file carries the output's name
            done = True
        finally:
            if not done:
                _abort(procs, reader)
            _discard(folder)
    seconds = time.monotonic() - started
    frames = reader.frames if reader.frames is not None else reader.last_done
    logger.info("render: %d frames into %s in %.1f s", frames, output, seconds)
    return RenderResult(output, frames, seconds, "\n".join(reader.lines), ffmpeg_text)


def _start_pair(vspipe_cmd: list[str], ffmpeg_cmd: list[str], ffmpeg_log: IO[bytes], env: Optional[dict[str, str]],
                procs: list[subprocess.Popen]) -> tuple[subprocess.Popen, subprocess.Popen]:
    """vspipe piped into ffmpeg, each appended to ``procs`` as soon as it runs (for :func:`_abort`)."""
    pipe = _start("vspipe", vspipe_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    procs.append(pipe)
    assert pipe.stdout is not None and pipe.stderr is not None
    try:
        enc = _start("ffmpeg", ffmpeg_cmd, stdin=pipe.stdout, stdout=subprocess.DEVNULL, stderr=ffmpeg_log, env=env)
        procs.append(enc)
    finally:
        pipe.stdout.close()  # ffmpeg owns the read end: vspipe sees a broken pipe if it dies
    return pipe, enc


def _limits(cancel: Optional[threading.Event], deadline: Optional[float], timeout: Optional[float],
            reader: "_VspipeReader") -> Callable[[], None]:
    """The check that raises a RenderError once ``cancel`` is set or the deadline has passed."""
    def check_limits() -> None:
        if cancel is not None and cancel.is_set():
            raise RenderError("cancelled by the caller")
        if deadline is not None and time.monotonic() > deadline:
            said = reader.last_line()
            raise RenderError(f"no result after {timeout:g} s" + (f" (vspipe: {said})" if said else ""))

    return check_limits


def _finish(reader: "_VspipeReader", pipe: subprocess.Popen, enc: subprocess.Popen, deadline: Optional[float],
            check_limits: Callable[[], None], ffmpeg_log: IO[bytes], partial: Path) -> str:
    """Wait for both programs; ffmpeg's log when both succeeded and the partial file has data,
    else the RenderError naming the program that failed."""
    rc_pipe = _wait(pipe, deadline, check_limits)
    rc_enc = _wait(enc, deadline, check_limits)
    reader.join()
    ffmpeg_log.seek(0)
    ffmpeg_text = ffmpeg_log.read().decode(errors="replace")
    if rc_pipe or rc_enc:
        raise _failure(rc_pipe, rc_enc, reader.lines, ffmpeg_text)
    if not _has_data(partial):
        raise RenderError(f"ffmpeg wrote no output ({_ffmpeg_error(ffmpeg_text) or 'no message'})", "ffmpeg")
    return ffmpeg_text


def _abort(procs: list[subprocess.Popen], reader: Optional["_VspipeReader"]) -> None:
    """After a failure, timeout, cancel or exception: kill both programs (the caller then
    removes the partial folder)."""
    for proc in procs:
        _kill(proc)
        proc.wait()
    if reader is not None:
        reader.join(timeout=5)  # EOF once the killed processes are gone


def _vspipe_program(found: Optional[str]) -> Optional[str]:
    """The vspipe program itself: the vapoursynth wheel installs a Python script that runs its
    binary as a child, which would outlive a killed uav (no parent-death signal reaches a
    grandchild); that binary is run directly. Any other vspipe is taken as it is."""
    if not found:
        return found
    try:
        with open(found, "rb") as f:
            head = f.read(512)
    except OSError:
        return found
    if not head.startswith(b"#!") or b"from vapoursynth import vspipe" not in head:
        return found
    import importlib.util

    spec = importlib.util.find_spec("vapoursynth")
    binary = Path(spec.origin).with_name("vspipe") if spec is not None and spec.origin else None
    return str(binary) if binary is not None and os.access(binary, os.X_OK) else found


def _programs(job: RenderJob) -> tuple[str, str]:
    """The job's vspipe and ffmpeg, or a RenderError naming the one that is missing."""
    vspipe = job.vspipe or _vspipe_program(find_vspipe())
    ffmpeg = job.ffmpeg or shutil.which("ffmpeg")
    for name, exe in (("vspipe", vspipe), ("ffmpeg", ffmpeg)):
        if not exe:
            raise RenderError(f"{name} not found; install it or run `uav doctor`", name)
    assert vspipe and ffmpeg
    return vspipe, ffmpeg


def _pump(reader: "_VspipeReader", callbacks: dict[str, Optional[Callable]], check_limits: Callable[[], None],
          pipe: subprocess.Popen, enc: subprocess.Popen) -> None:
    """Hand vspipe's events to their callbacks, in this thread, until vspipe closes its stderr."""
    while True:
        try:
            event = reader.events.get(timeout=_POLL_S)
        except queue.Empty:
            event = ()
        if event is None:
            break
        callback = callbacks.get(event[0]) if event else None
        if callback is not None:
            callback(*event[1:])
        check_limits()
        if enc.poll() and pipe.poll() is None:
            _kill(pipe)  # ffmpeg failed: vspipe might compute a slow frame before it notices


def ffmpeg_command(ffmpeg: str, ffmpeg_args: Sequence[str], target: Path) -> list[str]:
    # -nostdin: stdin is the y4m stream, never keyboard commands; -y: a stale partial is replaced.
    return [ffmpeg, "-hide_banner", "-nostdin", "-v", "error", "-y", *ffmpeg_args, path_arg(target, ffmpeg=True)]


def check_encoder(job: RenderJob, folder: Path, size: tuple[int, int] = (64, 48), timeout: float = 60) -> str:
    """Whether ffmpeg can write ``job``'s output: "" or ffmpeg's error, on one line.

    ffmpeg runs as :func:`render` runs it (the same inputs, stream mapping, codec options and
    container, the source's audio copied in), on one small grey y4m frame instead of the
    script's, into a file of the output's extension in ``folder`` (deleted after). A codec
    the container cannot hold, or an audio track it cannot, fails here in a fraction of a
    second instead of after the first chunk.
    """
    ffmpeg = job.ffmpeg or shutil.which("ffmpeg")
    if not ffmpeg:
        return "ffmpeg not found; install it or run `uav doctor`"
    w, h = size
    frame = f"YUV4MPEG2 W{w} H{h} F25:1 Ip A1:1 C420jpeg\nFRAME\n".encode() + bytes([128]) * (w * h * 3 // 2)
    target = Path(folder) / f"encoder-check{Path(job.output).suffix}"
    # One frame, and no more than a moment of the source's audio.
    cmd = ffmpeg_command(ffmpeg, [*job.ffmpeg_args, "-frames:v", "1", "-t", "0.2"], target)
    try:
        run = subprocess.run(cmd, input=frame, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env=dict(job.env) if job.env is not None else None, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"ffmpeg did not run ({e})"
    finally:
        target.unlink(missing_ok=True)
    if run.returncode == 0:
        return ""
    # The first error is the cause (the rest follow from it); libx265 logs its settings regardless of -v.
    rows = [r for r in _meaningful(run.stderr.decode(errors="replace").splitlines())
            if not _ENCODER_CHATTER.match(r)]
    return _MUXER_TAG.sub("", rows[0]) if rows else f"exit status {run.returncode}"


def _start(name: str, cmd: list[str], **kwargs) -> subprocess.Popen:
    # A process group of its own: vspipe may be a wrapper that runs the real vspipe as a
    # child (the vapoursynth wheel's is), and killing only the wrapper would leave that
    # child computing, holding the pipes open.
    # (child_options: it also ends with uav, even a SIGKILLed one.)
    try:
        return subprocess.Popen(cmd, **child_options(), **kwargs)
    except OSError as e:
        raise RenderError(f"cannot start {name} ({e})", name) from None


def _kill(proc: subprocess.Popen) -> None:
    kill_tree(proc)


def _wait(proc: subprocess.Popen, deadline: Optional[float], check_limits: Callable[[], None]) -> int:
    """The process's exit status, checking the timeout and cancel while it finishes."""
    while True:
        try:
            left = _POLL_S if deadline is None else deadline - time.monotonic()
            return proc.wait(timeout=max(0.0, min(_POLL_S, left)))
        except subprocess.TimeoutExpired:
            check_limits()


class _VspipeReader(threading.Thread):
    """Reads vspipe's stderr to its end: progress to ``events`` (then None), the rest to ``lines``.

    A thread, not the caller's loop, so that the caller can keep checking timeout and cancel
    while vspipe computes a slow frame (pipes cannot be polled portably).
    """

    def __init__(self, stream: IO[bytes], log_file: Optional[IO[bytes]]):
        super().__init__(name="vspipe-stderr", daemon=True)
        self.stream, self.log_file = stream, log_file
        self.events: queue.Queue[Optional[tuple]] = queue.Queue()  # (kind, *values); None at the end
        self.lines: collections.deque[str] = collections.deque(maxlen=_KEEP_LINES)
        self.frames: Optional[int] = None  # from "Output N frames in"
        self.last_done, self.total = 0, 0
        self.start()

    def run(self) -> None:
        buf = b""
        try:
            while True:
                chunk = self.stream.read1(65536)  # type: ignore[attr-defined]
                if not chunk:
                    break
                if self.log_file is not None:
                    self.log_file.write(chunk)
                    self.log_file.flush()
                # vspipe rewrites its progress line with carriage returns.
                *parts, buf = re.split(rb"[\r\n]", buf + chunk)
                for part in parts:
                    self._line(part)
            self._line(buf)
        finally:
            self.stream.close()
            self.events.put(None)

    def _line(self, part: bytes) -> None:
        frame, done, step, cached = _FRAME.search(part), _DONE.search(part), _STEP.search(part), _CACHED.search(part)
        if frame:
            self.last_done, self.total = int(frame[1]), int(frame[2])
            self.events.put(("frames", self.last_done, self.total))
        elif done:
            self.frames = self.last_done = int(done[1])
            self.events.put(("frames", self.frames, self.total or self.frames))
        elif step:  # not kept: thousands of them would push the lines that explain a failure out
            chunk, chunks, n, steps = (int(x) for x in step.groups())
            self.events.put(("step", n, steps, chunk, chunks))
        elif cached:
            self.events.put(("cached", int(cached[1]), int(cached[2])))
        elif part.strip():
            self.lines.append(part.decode(errors="replace").rstrip())
            warned = _WARNING.match(part.strip())
            if warned:
                self.events.put(("warning", warned[1].decode(errors="replace")))

    def last_line(self) -> str:
        lines = list(self.lines)
        return lines[-1].strip() if lines else ""


def _meaningful(lines: Sequence[str]) -> list[str]:
    # Tracebacks underline code with ^ and ~, which says nothing on one line.
    return [s for s in (line.strip() for line in lines) if s.strip("^~ ")]


def _vspipe_error(lines: Sequence[str]) -> str:
    """vspipe's last error line (an exception, a failed frame), or ""."""
    errors = [r for r in _meaningful(lines) if "error" in r.lower() or "failed" in r.lower()]
    # A filter's error arrives wrapped in VapourSynth's exception class, which adds nothing.
    return errors[-1].removeprefix("vapoursynth.Error: ") if errors else ""


def _ffmpeg_error(text: str) -> str:
    """ffmpeg's error lines (it runs with -v error), the last few, on one line."""
    rows = list(dict.fromkeys(_meaningful(text.splitlines())))  # once each, in order
    return " | ".join(rows[-3:])


def _failure(rc_pipe: int, rc_enc: int, vspipe_lines: Sequence[str], ffmpeg_text: str) -> RenderError:
    """The one-line error naming the program that caused the failure.

    When ffmpeg fails, vspipe dies of the broken pipe (killed or a write error): ffmpeg's
    error is the cause. When the script fails, ffmpeg fails on the empty input: vspipe's is.
    """
    vs_error = _vspipe_error(vspipe_lines)
    vspipe_own = bool(vs_error) and "fwrite" not in vs_error and "broken pipe" not in vs_error.lower()
    if rc_pipe and (vspipe_own or not rc_enc):
        rows = _meaningful(vspipe_lines)
        why = vs_error or (f"killed by signal {-rc_pipe}" if rc_pipe < 0 else rows[-1] if rows else "no message")
        return RenderError(f"vspipe exited with status {rc_pipe}: {why}", "vspipe", rc_pipe)
    return RenderError(f"ffmpeg exited with status {rc_enc}: {_ffmpeg_error(ffmpeg_text) or 'no message'}",
                       "ffmpeg", rc_enc)


