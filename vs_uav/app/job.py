"""The one job layer: what ``uav upscale``, the preset editor and the cluster share.

An :class:`UpscaleJob` is one render: a source, the settings, the encoder, the output, and
where it runs (this machine, or a Ray cluster with :class:`~vs_uav.app.cluster.ClusterOptions`).
:func:`run_job` runs it in numbered steps:

1. the work folder next to the output, locked (:class:`RunFolder`);
2. the source probed once and prepared (odd sizes, deinterlacing), what the output can keep of
   it (:func:`vs_uav.media.output.output_spec`), the cut list read;
3. what can fail cheaply checked before the model loads (:func:`vs_uav.media.preflight.preflight`);
4. the script written (:func:`vs_uav.media.script.make_script`);
5. the render: ``vspipe | ffmpeg`` here (:func:`vs_uav.media.render.render`) or segments on the
   cluster (:func:`vs_uav.app.cluster.render_cluster`);
6. the output verified, the work folder removed.

Front ends bring :class:`JobEvents` (progress, warnings, notes) and a stop event. Every failure
is a :class:`JobError` (one line, no program prefix: the front end adds its own); a stop is
:class:`JobStopped`, which says what was kept and how to resume.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from vs_uav.errors import UavError, one_line
from vs_uav.untrusted import escaped

try:
    import fcntl  # the work folder's lock; POSIX
except ImportError:  # pragma: no cover - Windows: renders are not locked against each other
    fcntl = None

if TYPE_CHECKING:
    from vs_uav.app.cluster import ClusterOptions
    from vs_uav.app.presets import Preset
    from vs_uav.media.encoder import EncoderSettings
    from vs_uav.media.output import OutputSpec
    from vs_uav.media.probe import MediaInfo
    from vs_uav.media.render import RenderJob
    from vs_uav.settings import UpscaleSettings

SCRIPT_NAME = "upscale.vpy"


class JobError(UavError, RuntimeError):
    """A job that cannot be run or did not finish; one line without a program prefix."""


class JobStopped(UavError, RuntimeError):
    """The stop event was set: everything ended; ``kept`` says what stays and how to go on."""

    def __init__(self, ended: str, kept: str):
        super().__init__(f"{ended}; {kept}")
        self.ended, self.kept = ended, kept


class _Stop(Exception):
    """The stop event was seen inside a step; run_job says what was kept."""


class JobEvents:
    """What a running job tells its front end; every method may be left as it is (silent)."""

    def started(self, frames: int) -> None:
        """The render begins: the source's frame count, from the probe."""

    def frames(self, done: int, total: int) -> None:
        """Frames written so far (one machine)."""

    def step(self, step: int, steps: int, chunk: int, chunks: int) -> None:
        """A denoising step of a chunk finished (one machine)."""

    def cached(self, chunk: int, chunks: int) -> None:
        """A chunk was read from the disk cache instead of computed (one machine)."""

    def cluster(self, state: Any) -> None:
        """The cluster's progress (a :class:`vs_uav.app.cluster.ClusterProgress`)."""

    def warning(self, text: str) -> None:
        """Something the user should know that does not stop the job."""

    def note(self, text: str) -> None:
        """A plain line worth saying (e.g. what an earlier killed run left and was removed)."""

    def captioning(self, done: int, total: int) -> None:
        """Scenes captioned so far (``--prompt auto``), before the render."""


@dataclass(frozen=True)
class JobResult:
    output: Path
    seconds: float
    summary: str = ""  # the cluster's "N segments on M workers ..."; "" on one machine
    verified: bool = True  # the output holds the frames written (the cluster's join refuses it otherwise)


@dataclass(frozen=True)
class UpscaleJob:
    """One render. Paths are absolute (:meth:`create` makes them so): the script runs in the
    work folder, and a cluster's nodes read the same paths."""

    source: Path
    output: Path
    settings: "UpscaleSettings"
    encoder: "EncoderSettings"
    cluster: Optional["ClusterOptions"] = None  # None: this machine
    deinterlace: str = "none"
    resume: bool = True  # one machine: the chunk cache in the work folder (the cluster always resumes)
    check: bool = True  # the cheap checks (preflight) before the model loads
    prepare: tuple[str, ...] = ()  # script lines between reading the source and uav.Upscale
    # An excerpt: the source's frames first .. end - 1 only (a conform's piece, --frames), with
    # their own frame numbers; it starts cold at ``first``, as at a scene cut. None: all frames.
    frame_range: Optional[tuple[int, int]] = None
    # --prompt auto: the captioner that writes encoder.captions (when that file is absent) before
    # the render; "" for none.
    captioner: str = ""
    captioner_bits: str = "none"  # --captioner-bits: 8bit / 4bit weights (bitsandbytes, CUDA)
    # --overwrite: a file already at the output is replaced (once the render is complete); without
    # it such a file is refused before anything runs (a queue skips the outputs it recorded).
    overwrite: bool = False

    @classmethod
    def create(cls, source: os.PathLike | str, settings: "UpscaleSettings", encoder: "EncoderSettings",
               output: Optional[os.PathLike | str] = None, **options: Any) -> "UpscaleJob":
        """A job with its paths made absolute and the default output (``in.uav.mkv`` next to
        ``in.mp4``) when ``output`` is None; JobError for an input that is not a file, an
        output that is the input, or options that do not go together. ``source`` may be an
        image sequence (a pattern such as ``scan/reel1_%07d.dpx``, or its folder), read at
        ``fps`` (an option; :data:`vs_uav.media.sequence.DEFAULT_FPS` by default)."""
        from vs_uav.app.plan import default_output
        from vs_uav.media.output import absolute
        from vs_uav.media.probe import not_a_video
        from vs_uav.media.sequence import check_fps, find_sequence, fps_line, is_sequence

        given, fps = Path(source), options.pop("fps", None)
        if is_sequence(given):  # frames, one file each: read at --fps, from the first file's number
            try:
                given, rate = find_sequence(given).pattern, check_fps(fps)
            except ValueError as e:
                raise JobError(str(e)) from None
            options["prepare"] = (fps_line(rate), *options.get("prepare", ()))
        elif fps is not None:
            raise JobError(f"--fps {fps:g}: accepted for an image sequence only (a video has its own rate)")
        elif not given.is_file():
            raise JobError(not_a_video(given))
        source = absolute(given)
        output = absolute(output) if output is not None else default_output(source, encoder)
        encoder = _sequence_encoder(output, encoder, options.get("cluster"))
        settings, encoder = _auto_prompt(settings, encoder, output, options)
        _check_name_length(output)
        if output.resolve() == source.resolve():
            raise JobError(f"--output {output} is the input; choose another file")
        # The script runs in the work folder (and on a cluster's nodes): folders given relative
        # to here are named absolutely in it, as every other path is.
        folders = {name: str(absolute(getattr(settings, name))) for name in ("model", "cache_dir")
                   if getattr(settings, name)}
        job = cls(source, output, settings.replace(**folders) if folders else settings, encoder, **options)
        if job.frame_range is not None and not (0 <= job.frame_range[0] < job.frame_range[1]):
            first, end = job.frame_range
            raise JobError(f"--frames {first}-{end - 1}: accepted: FIRST-LAST with 0 <= FIRST <= LAST")
        if job.cluster is not None and not job.resume:
            raise JobError("--no-resume: accepted: one-machine renders only (a cluster render keeps its "
                           "finished segments; --keep-work keeps them after success too)")
        return job

    def command(self, preset: "Preset", base: Optional["Preset"] = None) -> str:
        """The ``uav upscale`` line that runs this job with ``preset``'s values (see
        :func:`upscale_command`)."""
        return upscale_command(preset, self.source, self.output, self.cluster, base)


# What uav adds to the output's name for the files beside it: '.NAME.uav-done.json' (a queue's record).
_ADDED = len(".") + len(".uav-done.json")


def _check_name_length(output: Path) -> None:
    """JobError in one line when the output's name, with what uav adds to it for its work folder
    and record, is longer than the file system takes (255 bytes on most)."""
    try:
        limit = os.pathconf(output.parent if output.parent.is_dir() else "/", "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        limit = 255
    long = next((part for part in output.parent.parts if len(os.fsencode(part)) > limit), None)
    if long is not None:
        raise JobError(f"--output {output}: the folder name {long[:40]}... is {len(os.fsencode(long))} bytes; "
                       f"accepted: up to {limit}")
    size = len(os.fsencode(output.name))
    if size + _ADDED > limit:
        raise JobError(f"--output {output.name[:40]}...: a name of {size} bytes; accepted: up to {limit - _ADDED} "
                       f"(the file system takes {limit}, uav adds {_ADDED} for its work files): give a shorter -o")


def _auto_prompt(settings: "UpscaleSettings", encoder: "EncoderSettings", output: Path,
                 options: dict[str, Any]) -> tuple["UpscaleSettings", "EncoderSettings"]:
    """``--prompt auto``: the scenes are captioned into the captions file (``--captions``, or
    ``out.captions.tsv`` next to the output) unless it exists, and rendered with it; the
    prompt for blank captions is then empty. ``--captioner`` alone is refused."""
    from dataclasses import replace

    from vs_uav.app.captions import AUTO_PROMPT, default_captions_path
    from vs_uav.media.output import absolute

    if settings.prompt.strip().lower() != AUTO_PROMPT:
        for name in ("captioner", "captioner_bits"):
            if options.get(name):
                raise JobError(f"--{name.replace('_', '-')} {options[name]}: accepted with --prompt auto only "
                               "(or `uav caption`)")
        return settings, replace(encoder, captions=str(absolute(Path(encoder.captions)))) if encoder.captions             else encoder
    from vs_uav.weights.captioners import DEFAULT_CAPTIONER, check_captioner_name

    options["captioner"] = options.get("captioner") or DEFAULT_CAPTIONER
    try:
        check_captioner_name(options["captioner"])
    except ValueError as e:
        raise JobError(str(e)) from None
    captions = absolute(Path(encoder.captions)) if encoder.captions else default_captions_path(output)
    return settings.replace(prompt=""), replace(encoder, captions=str(captions))


def _sequence_encoder(output: Path, encoder: "EncoderSettings", cluster: Any) -> "EncoderSettings":
    """The encoder of ``output``: an image sequence (``out/%07d.tif``) is written by the codec its
    extension names (16-bit RGB TIFF, PNG or DPX); JobError for one that names none, a sequence
    codec with a video output, or a sequence on a cluster."""
    from dataclasses import replace

    from vs_uav.media.encoder import IMAGE_CODECS, IMAGE_SUFFIXES
    from vs_uav.media.sequence import IMAGE_SUFFIXES as READ_SUFFIXES
    from vs_uav.media.sequence import check_pattern, is_pattern

    image = output.suffix.lower() in READ_SUFFIXES  # a name ffmpeg's image2 muxer would take as a pattern
    try:
        if image or is_pattern(output):
            check_pattern(output, "--output")
    except ValueError as e:
        raise JobError(str(e)) from None
    if image and not is_pattern(output):
        raise JobError(f"--output {output}: one {output.suffix} file cannot hold a video; accepted: a pattern with a "
                       f"frame-number field, e.g. {output.with_suffix('') / ('%07d' + output.suffix)}, or a video file")
    if not is_pattern(output):
        if encoder.codec in IMAGE_CODECS:
            raise JobError(f"--codec {encoder.codec} writes an image sequence; accepted: an --output pattern, e.g. "
                           f"{output.parent / ('%07d' + encoder.container)}")
        return encoder
    codec = IMAGE_SUFFIXES.get(output.suffix.lower())
    if codec is None:
        raise JobError(f"--output {output}: an image sequence of {output.suffix or 'no extension'}; accepted: "
                       f"{', '.join(IMAGE_SUFFIXES)} (16-bit RGB), or a video file")
    if encoder.codec in IMAGE_CODECS and encoder.codec != codec:
        raise JobError(f"--codec {encoder.codec} with --output {output}: the extension names {codec}; accepted: "
                       "the two agreeing, or no --codec")
    if cluster is not None:
        raise JobError("--cluster with an image sequence output: not built yet; accepted: a video output (ffv1 "
                       "is lossless), then ffmpeg -i out.mkv out/%07d.tif")
    return replace(encoder, codec=codec)


# -- the command line of a job ------------------------------------------------------------------

def upscale_command(preset: "Preset", source: Path, output: Path, cluster: Optional["ClusterOptions"] = None,
                    base: Optional["Preset"] = None) -> str:
    """The ``uav upscale`` command line that renders ``preset`` from ``source`` into ``output``:
    ``--preset NAME`` when ``base`` (a preset loadable by its name) is given, then an option for
    every value differing from it (from the defaults without ``base``), written so that the CLI
    reads back exactly ``preset``'s settings; ``cluster`` adds ``--cluster`` and its options.
    The preset editor shows it. ``uav`` is taken from PATH."""
    from vs_uav.app.presets import Preset
    from vs_uav.media.encoder import ENCODER_SETTINGS, EncoderSettings
    from vs_uav.settings import SETTINGS, UpscaleSettings

    start = base if base is not None else Preset("command-line", UpscaleSettings(), EncoderSettings())
    args = ["uav", "upscale", str(source), "-o", str(output)] + (["--preset", base.name] if base is not None else [])
    for specs, table in ((SETTINGS, "upscale"), (ENCODER_SETTINGS, "encoder")):
        now, was = preset.values(table), start.values(table)
        args += [arg for spec in specs if now[spec.name] != was[spec.name] for arg in _option(spec, now[spec.name])]
    return shlex.join(args + (_cluster_args(cluster) if cluster is not None else []))


def _option(spec: Any, value: Any) -> list[str]:
    flag = "--" + spec.name.replace("_", "-")
    if spec.type is bool:
        return [flag if value else f"--no-{flag[2:]}"]
    text = ",".join(map(str, value)) if spec.type is list else repr(value) if spec.type is float else str(value)
    return [f"{flag}={text}"] if text.startswith("-") else [flag, text]  # a value starting with '-' is no option


def _cluster_args(cluster: "ClusterOptions") -> list[str]:
    from vs_uav.app.cluster import DEFAULT_SEGMENT_SECONDS

    args = ["--cluster", cluster.address]
    if cluster.workers is not None:
        args += ["--workers", str(cluster.workers)]
    if cluster.segment_seconds != DEFAULT_SEGMENT_SECONDS:
        args += ["--segment-seconds", repr(cluster.segment_seconds)]
    if cluster.split_long:
        args += ["--split-long", repr(cluster.split_long)]
    if cluster.keep_work:
        args.append("--keep-work")
    return args


def output_taken(output: Path) -> bool:
    """Whether something is at ``output`` already (an image sequence's: any file its pattern names)."""
    from vs_uav.media.sequence import frame_name_pattern, is_pattern

    output = Path(output)
    if not is_pattern(output):
        return os.path.lexists(output)
    names = frame_name_pattern(output.name)
    return output.parent.is_dir() and any(names.fullmatch(p.name) for p in output.parent.iterdir())


def check_output_free(job: UpscaleJob) -> None:
    """JobError in one line when a file is at the job's output and ``--overwrite`` was not given:
    uav never replaces a file it was not told to (as ffmpeg without ``-y``)."""
    if job.overwrite or not output_taken(job.output):
        return
    if job.output.is_dir():
        raise JobError(f"--output {job.output}: a folder; accepted: a file name, or a folder for several sources")
    from vs_uav.media.sequence import is_pattern

    what = "frames of an image sequence are" if is_pattern(job.output) else "a file is"
    raise JobError(f"--output {job.output}: {what} there already; accepted: another output, or --overwrite to "
                   "replace it once the render is complete")


# -- the work folder ----------------------------------------------------------------------------

class RunFolder:
    """A one-machine render's work folder next to the output, ``.out.mkv.uav-work`` (the
    cluster's, :func:`vs_uav.app.cluster.work_folder`): ``job/`` holds the script and the files
    its command reads, ``cache/`` the finished chunks with ``resume`` (the render's cache_dir),
    and ``lock`` the pid of the uav rendering into it.

    ``lock`` is locked (flock) while the render runs. The kernel releases the lock with the
    process, even a SIGKILLed one: what a later run finds in an unlocked folder was left by a
    run that has ended, and goes (its partial output, its script folder, half-written cache
    files); a locked one is another render still going, and the new one is refused without
    touching anything. The folder is removed after the output is verified; after a failure
    or a stop only the finished chunks stay (``kept`` says how many).
    """

    def __init__(self, output: Path, resume: bool, events: JobEvents):
        from vs_uav.app.cluster import work_folder

        self.output, self.resume, self.events = Path(output), resume, events
        self.path = work_folder(self.output)
        self.job, self.cache, self.partial = self.path / "job", self.path / "cache", self.path / "partial"
        self.kept, self.verified, self._lock = 0, False, None

    def __enter__(self) -> "RunFolder":
        from vs_uav.app.cluster import FolderError, own_folder
        from vs_uav.media.preflight import PreflightError, check_writable_folder

        try:  # before anything is created next to the output
            check_writable_folder(self.path.parent, "--output")
            own_folder(self.path)  # no link followed, no other user's folder used
            self._acquire()
        except (PreflightError, FolderError) as e:
            raise JobError(str(e)) from None
        self._clean_leftovers()
        self.job.mkdir()
        return self

    def _acquire(self) -> None:
        from vs_uav.app.cluster import open_lock

        lock = open_lock(self.path / "lock")
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                lock.seek(0)
                owner = lock.read(32).strip() or "?"
                lock.close()
                raise JobError(f"another uav (pid {escaped(owner)}) is rendering {self.output} (its work folder {self.path} "
                               "is locked); wait for it to end or stop it") from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._lock = lock

    def _clean_leftovers(self) -> None:
        """What an earlier run that was killed (SIGKILL, a crash, a power cut) left, inside this
        work folder only (own_folder: a real folder of this user's, no links in it)."""
        left = [p for p in (self.partial, self.job) if p.exists()]
        left += sorted(self.cache.glob("*/chunk*/*.tmp")) if self.cache.is_dir() else []
        for p in left:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        if left:
            self.events.note("removed what an earlier run that did not end cleanly left: "
                             f"{', '.join(str(p) for p in left)}")

    def finished_chunks(self) -> int:
        # ChunkDriver's layout: cache/<fingerprint>/chunk<first>-<end>-<digest>/state.safetensors
        return sum(1 for p in self.cache.glob("*/chunk*/state.safetensors") if ".damaged-" not in p.parent.name)

    def verify(self, frames: int) -> None:
        """The output holds the frames vspipe wrote: then the folder can go."""
        from vs_uav.media.probe import count_frames

        found = count_frames(self.output)
        self.verified = found == frames
        if not self.verified:
            self.events.warning(f"{self.output} holds {found} frames, vspipe wrote {frames}: the finished chunks "
                                "are kept")

    def __exit__(self, *exc: Any) -> None:
        try:
            shutil.rmtree(self.job, ignore_errors=True)
            self.kept = 0 if self.verified else self.finished_chunks()
            if self.kept:
                (self.path / "lock").unlink(missing_ok=True)  # still locked by this process: no one else takes it
            else:
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            if self._lock is not None:
                self._lock.close()  # the lock with it


# -- running a job ------------------------------------------------------------------------------

@dataclass
class _Prepared:
    """What steps 2-4 made: the render job, the file the script reads, the output's spec, the
    ffmpeg filter file (or None)."""

    render: "RenderJob"
    video: Path
    spec: "OutputSpec"
    filter_file: Optional[Path]


def run_job(job: UpscaleJob, events: Optional[JobEvents] = None,
            stop: Optional[threading.Event] = None) -> JobResult:
    """Run ``job`` (the steps in the module's docstring). JobError in one line on failure,
    JobStopped when ``stop`` is set; only a complete file gets the output's name."""
    events = events or JobEvents()
    stop = stop or threading.Event()
    check_output_free(job)
    if job.cluster is not None:
        return _run_on_cluster(job, events, stop)
    run = RunFolder(job.output, job.resume and not job.settings.cache_dir, events)
    try:
        with run:  # 1.
            settings = job.settings.replace(cache_dir=str(run.cache)) if run.resume else job.settings
            prepared = _prepare(job, settings, run.job, events, stop)  # 2.-4.
            result = _render_here(prepared, events, stop, run)  # 5.
            run.verify(result.frames)  # 6.
    except _Stop:
        raise JobStopped("vspipe and ffmpeg ended", _kept(run, job)) from None
    return JobResult(job.output, result.seconds, verified=run.verified)


def _render_here(prepared: _Prepared, events: JobEvents, stop: threading.Event, run: "RunFolder"):
    from vs_uav.media.render import RenderError, render

    events.started(prepared.spec.media.frames)
    try:
        return render(prepared.render, progress=events.frames, cancel=stop, step_progress=events.step,
                      warning=events.warning, cached=events.cached)
    except RenderError as e:
        if stop.is_set():
            raise _Stop from None
        raise JobError(_disk_full(str(e), run) or str(e)) from None


_NO_SPACE = ("No space left on device", "os error 28", "ENOSPC", "Disk quota exceeded")


def _disk_full(said: str, run: "RunFolder") -> str:
    """The line for a render that filled the disk: what filled it, what was kept; "" otherwise."""
    if not any(s in said for s in _NO_SPACE) and shutil.disk_usage(run.path).free > 16 * 2**20:
        return ""
    chunks = run.finished_chunks()
    cache = sum(p.stat().st_size for p in run.cache.rglob("*") if p.is_file()) if run.cache.is_dir() else 0
    kept = (f"the chunk cache ({chunks} finished chunk{'s' if chunks != 1 else ''}, {cache / 2**20:.0f} MiB in "
            f"{run.cache}) is kept: free space, then run the same command to resume") if chunks else \
        "nothing was kept"
    return (f"the disk of {run.path.parent} is full ({shutil.disk_usage(run.path).free / 2**20:.0f} MiB free): the "
            f"chunk cache ({cache / 2**20:.0f} MiB) and the partial output filled it; the partial output was removed, "
            f"{kept} ({one_line(said)[:160]})")


def _run_on_cluster(job: UpscaleJob, events: JobEvents, stop: threading.Event) -> JobResult:
    """Step 5 on the cluster: the same script, in segments; its files in the work folder."""
    from vs_uav.app.cluster import ClusterError, ClusterJob, driver_settings, job_folder, render_cluster, work_folder

    settings = driver_settings(job.settings)  # the workers' environment is not this one
    try:
        with job_folder(job.output) as folder:
            p = _prepare(job, settings, Path(folder), events, stop)
            cluster_job = ClusterJob(p.render.script, job.source, p.video, job.output, settings, job.encoder, p.spec,
                                     p.filter_file, job.prepare, job.frame_range)
            try:
                result = render_cluster(cluster_job, job.cluster, progress=events.cluster, cancel=stop)
            except ClusterError as e:
                if stop.is_set():
                    raise _Stop from None
                raise JobError(str(e)) from None
    except _Stop:
        kept = (f"the finished segments stay in {work_folder(job.output)}: run the same command to resume"
                if work_folder(job.output).is_dir() else "nothing was kept: run the same command to start again")
        raise JobStopped("the workers and Ray ended", kept) from None
    return JobResult(result.output, result.seconds, result.summary())


def run_jobs_on_cluster(jobs: Sequence[UpscaleJob], events: Optional[JobEvents] = None,
                        stop: Optional[threading.Event] = None) -> list[JobResult | JobError]:
    """Several jobs on one cluster (the files of a queue; ``jobs[0].cluster`` for all): each
    prepared in its work folder (steps 1-4), then the segments of all of them in one pool,
    longest first (:func:`vs_uav.app.cluster.render_clusters`), so that a farm stays busy across
    files. Returns each job's result or its error; JobStopped when ``stop`` is set (the
    finished segments stay: the same command resumes)."""
    from vs_uav.app.cluster import ClusterError, ClusterJob, driver_settings, job_folder, render_clusters

    events, stop = events or JobEvents(), stop or threading.Event()
    outcomes: dict[int, JobResult | JobError] = {}
    ready: list[tuple[int, "ClusterJob"]] = []
    try:
        with contextlib.ExitStack() as stack:
            for i, job in enumerate(jobs):
                settings = driver_settings(job.settings)  # the workers' environment is not this one
                try:
                    p = _prepare(job, settings, Path(stack.enter_context(job_folder(job.output))), events, stop)
                except JobError as e:
                    outcomes[i] = e
                    continue
                ready.append((i, ClusterJob(p.render.script, job.source, p.video, job.output, settings, job.encoder,
                                            p.spec, p.filter_file, job.prepare, job.frame_range)))
            try:
                results = render_clusters([c for _, c in ready], jobs[0].cluster, events.cluster, stop) if ready \
                    else []
            except ClusterError as e:
                if stop.is_set():
                    raise _Stop from None
                results = [e] * len(ready)
    except _Stop:
        raise JobStopped("the workers and Ray ended", "the finished segments stay in the work folders next to the "
                         "outputs: run the same command to resume") from None
    for (i, _), r in zip(ready, results):
        outcomes[i] = JobError(str(r)) if isinstance(r, ClusterError) else \
            JobResult(r.output, r.seconds, r.summary())
    return [outcomes[i] for i in range(len(jobs))]


def _kept(run: RunFolder, job: UpscaleJob) -> str:
    """What a stopped one-machine render kept, and how to go on."""
    if job.settings.cache_dir:
        return f"the finished chunks stay in --cache-dir {job.settings.cache_dir}: run the same command to resume"
    if run.kept:
        return (f"{run.kept} finished chunk{'s stay' if run.kept > 1 else ' stays'} in {run.path}: run the same "
                "command to resume")
    if run.resume:
        return "no chunk was finished, nothing was kept: run the same command to start again"
    return f"nothing was kept{' (--no-resume)' if not job.resume else ''}: run the same command to start again"


def _prepare(job: UpscaleJob, settings: "UpscaleSettings", folder: Path, events: JobEvents,
             stop: threading.Event) -> _Prepared:
    """Steps 2-4: the source probed and prepared, the cheap checks, the script written into
    ``folder``. JobStopped as soon as ``stop`` is set."""
    from vs_uav.media.output import ffmpeg_options, shell_command
    from vs_uav.media.render import RenderJob
    from vs_uav.media.script import make_script

    video, spec, filter_file = _probe(job, folder, events)  # 2.
    _check_scene_cuts(job.encoder, spec.media.whole_frames or spec.media.frames)
    _stopped(stop)
    _captions(job, events, stop)
    _stopped(stop)
    render_job = RenderJob(folder / SCRIPT_NAME, job.output, ffmpeg_options(job.source, job.encoder, spec,
                                                                            filter_file),
                           partial_dir=folder.parent / "partial")  # the work folder's own
    if job.check:  # 3.
        _preflight(job, render_job, spec.media, settings, folder, stop)
    command = shell_command(render_job.script, job.source, job.output, job.encoder, spec, filter_file)
    render_job.script.write_text(make_script(video, settings, namespace=has_namespace(), prepare=job.prepare,
                                             spec=spec, command=command, encoder=job.encoder,
                                             frame_range=job.frame_range), encoding="utf-8")  # 4.
    _stopped(stop)
    return _Prepared(render_job, video, spec, filter_file)


def check_job(job: UpscaleJob) -> int:
    """Steps 2-3 without writing anything next to the output, and without deinterlacing: the
    source probed (an interlaced one refused unless ``deinterlace`` is set), the cut list read,
    and with ``check`` the cheap checks (a one-frame test encode in a temporary folder).
    Returns the frames the output will hold; JobError in one line. What a queue runs for every
    file before its first render."""
    import tempfile

    from vs_uav.media.output import check_output_size, ffmpeg_options, needs_filter_file, output_spec, video_filter
    from vs_uav.media.probe import excerpt, interlaced_message, probe
    from vs_uav.media.render import RenderJob
    from vs_uav.media.script import reading_script

    try:
        media = probe(job.source, reading_script(job.source, job.prepare))
        if job.frame_range is not None:
            if media.interlaced:
                raise ValueError(f"--frames with the interlaced {job.source}: accepted: a progressive source")
            media = excerpt(media, *job.frame_range)
        check_output_size(media, job.encoder)
    except ValueError as e:
        raise JobError(str(e)) from None
    if media.interlaced and job.deinterlace == "none":
        raise JobError(interlaced_message(job.source, media))
    _check_scene_cuts(job.encoder, media.whole_frames or media.frames)
    if job.encoder.captions and not job.captioner:
        _captions(job, JobEvents(), threading.Event())
    if job.check:
        spec = output_spec(media, job.encoder, container=job.output.suffix)
        with tempfile.TemporaryDirectory(prefix="uav-check-") as tmp:
            folder, filter_file = Path(tmp), None
            if needs_filter_file(spec):
                filter_file = folder / "video.filter"
                filter_file.write_text(video_filter(spec), encoding="utf-8")
            render_job = RenderJob(folder / SCRIPT_NAME, job.output,
                                   ffmpeg_options(job.source, job.encoder, spec, filter_file))
            _preflight(job, render_job, media, job.settings, folder, threading.Event())
    return media.frames * (2 if media.interlaced else 1)  # bwdif: one frame per field


def _captions(job: UpscaleJob, events: JobEvents, stop: threading.Event) -> None:
    """Step 2b: with ``--prompt auto`` the scenes captioned into the captions file unless it
    exists (the captioner loaded, used for every scene and freed before vspipe loads the
    diffusion model); then the file checked against the clip's scenes, before the model loads."""
    from vs_uav.app.captions import CaptionJob, CaptionJobError, check_captions, read_clip, run_captions
    from vs_uav.media.captions import Cancelled

    path = Path(job.encoder.captions) if job.encoder.captions else None
    if path is None:
        return
    try:
        if job.captioner and not path.is_file():
            caption_job = CaptionJob(job.source, path, job.captioner, scene_cuts=job.encoder.scene_cuts,
                                     scene_threshold=job.encoder.scene_threshold, prepare=job.prepare,
                                     device=job.settings.device, bits=job.captioner_bits,
                                     max_memory=job.settings.max_memory)
            events.note(f"captioning the scenes of {job.source.name} with {job.captioner} into {path}")
            result = run_captions(caption_job, events.captioning, stop)
            events.note(result.summary)
        elif job.captioner:
            events.note(f"using the captions in {path} (delete it to caption again)")
        clip, _ = read_clip(job.source, job.prepare)
        check_captions(path, clip, job.encoder.scene_cuts, job.encoder.scene_threshold)
    except Cancelled:
        raise _Stop from None
    except CaptionJobError as e:
        _stopped(stop)
        raise JobError(str(e)) from None


def _stopped(stop: threading.Event) -> None:
    if stop.is_set():
        raise _Stop


def _preflight(job: UpscaleJob, render_job: "RenderJob", media: "MediaInfo", settings: "UpscaleSettings",
               folder: Path, stop: threading.Event) -> None:
    from vs_uav.media.preflight import PreflightError, preflight

    try:
        preflight(render_job, job.source, media, settings, job.encoder, folder)
    except (PreflightError, ValueError) as e:
        _stopped(stop)  # Ctrl+C reaches ffprobe and the test encode too
        raise JobError(str(e)) from None


def _probe(job: UpscaleJob, folder: Path, events: JobEvents) -> tuple[Path, "OutputSpec", Optional[Path]]:
    """(the file the script reads, the output's spec, the filter file or None): the clip the
    script hands the filter, probed once; an interlaced one refused, or deinterlaced into
    ``folder`` first; an odd 4:2:0 size kept through 4:4:4; what the codec cannot keep said."""
    from vs_uav.media.output import check_output_size, needs_filter_file, output_spec, video_filter
    from vs_uav.media.script import prepare_source

    try:
        video, media = prepare_source(job.source, job.prepare, folder, job.deinterlace, job.frame_range)
        check_output_size(media, job.encoder)
    except ValueError as e:
        raise JobError(str(e)) from None
    spec = output_spec(media, job.encoder, container=job.output.suffix)
    if spec.note:
        events.warning(spec.note)
    filter_file = None
    if needs_filter_file(spec):
        filter_file = folder / "video.filter"
        filter_file.write_text(video_filter(spec), encoding="utf-8")
    return video, spec, filter_file


def _check_scene_cuts(encoder: "EncoderSettings", frames: int) -> None:
    """A --scene-cuts file is read now (cheap): a bad line fails here, not inside vspipe."""
    from vs_uav.vsfilter.scenes import AUTO, NONE, SceneError, read_cuts

    if encoder.scene_cuts not in (AUTO, NONE):
        try:
            read_cuts(encoder.scene_cuts, frames)
        except SceneError as e:
            raise JobError(str(e)) from None


def has_namespace() -> bool:
    """Whether the native plugin gives core.uav here (else scripts import vs_uav)."""
    try:
        import vapoursynth as vs

        return hasattr(vs.core, "uav")
    except Exception:  # noqa: BLE001 - a broken VapourSynth: the script imports vs_uav and says why
        return False
