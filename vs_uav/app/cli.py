"""The ``uav`` command line."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

from vs_uav.app.job import JobError, JobEvents, JobStopped, UpscaleJob, run_job
from vs_uav.untrusted import ascii_float, ascii_int, escaped, is_ascii_digits


def int_arg(text: str) -> int:
    """argparse's type for a whole number: ASCII digits only ('²' and '٣' are refused)."""
    return ascii_int(text)


def float_arg(text: str) -> float:
    """argparse's type for a decimal number: ASCII digits only, finite."""
    return ascii_float(text)


int_arg.__name__, float_arg.__name__ = "int", "float"  # argparse names them in its one line

logger = logging.getLogger("vs_uav")

# The demo's inputs: the shared folder beside the checkout ($UAV_SHARED_DIR elsewhere, e.g. for
# an installed wheel, whose package folder has no checkout around it).
SHARED = Path(os.environ.get("UAV_SHARED_DIR") or Path(__file__).resolve().parents[3] / "shared")
DEMO_VIDEO = SHARED / "videos" / "old_animation_1.mp4"
DEMO_MODEL = SHARED / "reference" / "public" / "model"


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job in miniature: a real video through core.uav.Upscale under vspipe into
    ffmpeg/x265, with the tiny reference model (no weights can be downloaded here)."""
    from vs_uav.media.encoder import EncoderSettings
    from vs_uav.settings import UpscaleSettings

    model, source = Path(args.model), Path(args.input)
    for p, what in ((model, "model folder"), (source, "input video")):
        if not p.exists():
            raise SystemExit(f"uav demo: {what} {p} not found")
    try:
        settings = UpscaleSettings(prompt="an old animation", model=str(model.resolve()), vae=args.vae,
                                   steps=args.steps, propagation_steps=[args.steps - 1], seed=args.seed)
    except ValueError as e:
        raise SystemExit(f"uav demo: {e}")
    # A CPU renders the tiny model slowly at full size: a short, small excerpt keeps it quick.
    prepare = (f"# The demo's excerpt: the first {args.frames} frames at {args.width}x{args.height}.",
               f"clip = core.resize.Bicubic(clip[:{args.frames}], {args.width}, {args.height})")
    output = Path(args.output)
    try:
        job = UpscaleJob.create(source, settings, EncoderSettings(audio="none"), output, prepare=prepare,
                                check=False, resume=False)
    except JobError as e:
        raise SystemExit(f"uav demo: {e}")
    rc = _run(job, "uav demo")
    print(f"uav demo: {args.frames} frames {args.width}x{args.height} -> {4 * args.width}x{4 * args.height}, "
          f"written to {output}", file=sys.stderr)
    if model.resolve() == DEMO_MODEL.resolve():
        print("uav demo: the reference model has tiny random weights: this checks the whole path (VapourSynth, "
              "core.uav, vspipe, ffmpeg), the pictures are meaningless. Real weights: `uav download`.",
              file=sys.stderr)
    return rc


def _add_setting_options(parser: argparse.ArgumentParser, specs) -> None:
    """One option per setting of the settings model, with its help and default. Values stay
    text here: :func:`_collect` parses them, so that a bad one gets the settings model's
    one-line message (argparse's would be a usage dump naming a conversion function)."""
    for spec in specs:
        flag = "--" + spec.name.replace("_", "-")
        help_text = f"{spec.help} (default: {spec.default!r})".replace("%", "%%")  # argparse formats help
        if spec.type is bool:
            parser.add_argument(flag, dest=spec.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        else:
            metavar = ("{" + ",".join(spec.choices) + "}" if spec.choices else
                       "N,N,..." if spec.type is list else spec.type.__name__.upper())
            parser.add_argument(flag, dest=spec.name, default=None, metavar=metavar, help=help_text)


def _collect(args: argparse.Namespace, specs) -> dict:
    """The options given, parsed; ValueError ``--steps '2.5': accepted: ...`` for bad text."""
    values = {}
    for spec in specs:
        value = getattr(args, spec.name)
        if isinstance(value, str) and spec.type is list and value.strip().lower() == "none":
            value = ""  # --propagation-steps none: no steps (as "" is), e.g. to clear a preset's
        if isinstance(value, str):
            try:
                value = spec.parse(value)
            except ValueError as e:
                raise ValueError(f"--{spec.name.replace('_', '-')} {value!r}: {e}") from None
        if value is not None:
            values[spec.name] = value
    return values


def _resolve(args: argparse.Namespace, prog: str):
    """The --preset's values as defaults, explicit options over them, checked as a whole."""
    from vs_uav.app.presets import Preset, load
    from vs_uav.media.encoder import ENCODER_SETTINGS, EncoderSettings
    from vs_uav.settings import SETTINGS, UpscaleSettings

    try:
        base = load(args.preset) if args.preset else Preset("command-line")
        given = _collect(args, SETTINGS)
        if args.preset:
            _check_preset_steps(base, given)
        return Preset(base.name, UpscaleSettings(**{**base.values("upscale"), **given}),
                      EncoderSettings(**{**base.values("encoder"), **_collect(args, ENCODER_SETTINGS)}),
                      base.description)
    except ValueError as e:  # PresetError included: one line naming file, key, value, accepted
        raise SystemExit(f"{prog}: {e}")


def _check_preset_steps(base, given: dict) -> None:
    """The preset's propagation_steps must fit a --steps given over it: ValueError naming the
    preset as their origin and how to replace or clear them."""
    steps = given.get("steps")
    ours = base.settings.propagation_steps
    if steps is None or "propagation_steps" in given or not any(p >= steps for p in ours):
        return
    raise ValueError(f"propagation_steps={','.join(map(str, ours))} from preset {base.name!r} does not fit "
                     f"--steps {steps}; accepted: --propagation-steps with step indices in [0, {steps - 1}], "
                     "or --propagation-steps none to clear it")


def _add_preset_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", metavar="NAME", help="start from a preset (a name, e.g. old-film, or a .toml "
                        "file); options given explicitly override its values")


def _clock_text(seconds: float) -> str:
    seconds = int(seconds)
    h, m, sec = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


def _progress_line(clock) -> str:
    """The bar: frames written of the clip's (known from the probe before vspipe says it),
    what is happening (loading the model, the chunk and denoising step being computed,
    chunks read from the cache), elapsed, ETA (a :class:`vs_uav.media.render.ProgressClock`'s)."""
    width = 30
    done, total = clock.done, clock.total
    filled = int(width * done / total) if total else 0
    phase = clock.phase()
    eta = clock.eta()
    return (f"\r[{'#' * filled}{'-' * (width - filled)}] {done}/{total or '?'} frames{', ' + phase if phase else ''}, "
            f"{clock.elapsed:.0f} s elapsed, ETA {'--:--' if eta is None else _clock_text(eta)}\033[K")


class _ProgressBar(JobEvents):
    """One updating stderr line fed by the job's events (:class:`vs_uav.app.job.JobEvents`)."""

    def __init__(self, prog: str):
        from vs_uav.media.render import ProgressClock

        self.prog, self.clock, self.drawn = prog, ProgressClock(), False

    def started(self, frames: int) -> None:
        """The render starts: the clip's length (the probe's) is shown before any frame."""
        self.clock.total = frames
        self._draw()

    def frames(self, done: int, total: int) -> None:
        self.clock.frames(done, total)
        self._draw()

    def step(self, step: int, steps: int, chunk: int, chunks: int) -> None:
        self.clock.on_step(step, steps, chunk, chunks)
        self._draw()

    def cached(self, chunk: int, chunks: int) -> None:
        self.clock.on_cached(chunk, chunks)
        self._draw()

    def cluster(self, state) -> None:
        """The cluster's line (a :class:`vs_uav.app.cluster.ClusterProgress`), in place of the bar."""
        self.drawn = True
        sys.stderr.write(f"\r{self.prog}: {state.line()}\033[K")
        sys.stderr.flush()

    def warning(self, text: str) -> None:
        self.end()
        sys.stderr.write(escaped(f"{self.prog}: warning: {text}") + "\n")

    def note(self, text: str) -> None:
        self.end()
        sys.stderr.write(escaped(f"{self.prog}: {text}") + "\n")

    def captioning(self, done: int, total: int) -> None:
        self.drawn = True
        sys.stderr.write(f"\r{self.prog}: captioning scene {done}/{total}\033[K")
        sys.stderr.flush()

    def _draw(self) -> None:
        self.drawn = True
        sys.stderr.write(_progress_line(self.clock))
        sys.stderr.flush()

    def end(self) -> None:
        """Ends the bar's line (before any other message)."""
        if self.drawn:
            sys.stderr.write("\n")
            self.drawn = False


_STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


class _StopSignals:
    """While rendering, SIGINT (Ctrl+C), SIGTERM and SIGHUP set ``event`` (the render's cancel)
    instead of ending this process on the spot: the render then kills vspipe's and ffmpeg's
    process groups and removes the partial output, and the script's folder goes too."""

    def __enter__(self) -> "_StopSignals":
        self.event, self.received = threading.Event(), 0
        self._previous = {s: signal.signal(s, self._stop) for s in _STOP_SIGNALS}
        return self

    def _stop(self, signum: int, frame) -> None:
        self.received = self.received or signum
        self.event.set()

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def cmd_upscale(args: argparse.Namespace) -> int:
    """Build the graph, pipe it through vspipe into ffmpeg, show progress: one
    :class:`vs_uav.app.job.UpscaleJob`."""
    from vs_uav.app.queue import is_queue, plan_queue

    preset = _resolve(args, "uav upscale")
    options = dict(cluster=_cluster_options(args), deinterlace=args.deinterlace, resume=args.resume,
                   frame_range=_frame_range(args.frames, "uav upscale"), overwrite=args.overwrite)
    if args.fps is not None:
        options["fps"] = args.fps
    if args.captioner:
        options["captioner"] = args.captioner
    if args.captioner_bits != "none":
        options["captioner_bits"] = args.captioner_bits
    try:
        if is_queue(args.input, args.output):
            return _run_queue(plan_queue(args.input, preset.settings, preset.encoder, args.output, **options),
                              "uav upscale")
        job = UpscaleJob.create(args.input[0], preset.settings, preset.encoder, args.output, **options)
    except JobError as e:
        raise SystemExit(f"uav upscale: {e}")
    return _run(job, "uav upscale")


def _add_overwrite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a file already at the output (once the render is complete); without it such a "
                             "file is refused before anything runs, as ffmpeg does without -y (a queue skips the "
                             "outputs it finished before)")


def _frame_range(text: Optional[str], prog: str) -> Optional[tuple[int, int]]:
    """--frames FIRST-LAST (LAST included) as the half-open (FIRST, LAST + 1), or None."""
    if text is None:
        return None
    first, sep, last = text.partition("-")
    if not (sep and is_ascii_digits(first.strip()) and is_ascii_digits(last.strip())) or int(last) < int(first):
        raise SystemExit(f"{prog}: --frames {text!r}: accepted: FIRST-LAST, frame numbers from 0 with LAST included "
                         "and not before FIRST, e.g. 100-199")
    return int(first), int(last) + 1


def _cluster_options(args: argparse.Namespace, prog: str = "uav upscale"):
    """--cluster and its options (vs_uav.app.cluster.ClusterOptions), or None without --cluster."""
    from vs_uav.app.cluster import ClusterOptions, default_address

    given = [flag for flag, value in (("--workers", args.workers), ("--segment-seconds", args.segment_seconds),
                                      ("--split-long", args.split_long), ("--keep-work", args.keep_work or None))
             if value is not None]
    if args.cluster is None:
        if given:
            raise SystemExit(f"{prog}: {given[0]} needs --cluster; accepted: --cluster local or HOST:PORT")
        return None
    values = {}
    for name, flag, kind in (("workers", "--workers", ascii_int), ("segment_seconds", "--segment-seconds", ascii_float),
                             ("split_long", "--split-long", ascii_float)):
        text = getattr(args, name)
        if text is not None:
            try:
                values[name] = kind(text)
            except ValueError:
                raise SystemExit(f"{prog}: {flag} {text!r}: accepted: "
                                 f"{'an integer >= 1' if kind is ascii_int else 'a number of seconds'}") from None
    try:  # a bare --cluster: $RAY_ADDRESS, Ray's own convention, else a local instance
        return ClusterOptions(args.cluster or default_address(), keep_work=args.keep_work, **values)
    except ValueError as e:
        raise SystemExit(f"{prog}: {e}")


class _QueueBar(_ProgressBar):
    """The queue's lines: each file checked, skipped, started and failed, then its own bar."""

    def checked(self, job: UpscaleJob, index: int, total: int, error: str) -> None:
        if error:
            self.end()
            sys.stderr.write(escaped(f"{self.prog}: [{index}/{total}] {job.source}: {error}; the others are "
                                     "rendered") + "\n")

    def skipped(self, job: UpscaleJob) -> None:
        self.end()
        sys.stderr.write(escaped(f"{self.prog}: {job.output} was finished by an earlier run: skipped") + "\n")

    def file(self, job: UpscaleJob, index: int, total: int) -> None:
        from vs_uav.media.render import ProgressClock

        self.end()
        self.clock = ProgressClock()
        sys.stderr.write(escaped(f"{self.prog}: [{index}/{total}] {job.source} -> {job.output}") + "\n")

    def failed(self, job: UpscaleJob, error: str) -> None:
        self.end()
        sys.stderr.write(escaped(f"{self.prog}: {job.source} failed: {error}; the queue goes on") + "\n")

    def finished(self, job: UpscaleJob, result) -> None:
        self.end()
        sys.stderr.write(escaped(f"{self.prog}: wrote {result.output} in {result.seconds:.0f} s") + "\n")


def _interruptible(bar: _ProgressBar, run, stopped_line) -> tuple:
    """``run(stop_event)`` with the stop signals caught and log lines kept off the bar: (its
    result, 0), or, after the line ``stopped_line(signal name, JobStopped)``, (None, 128 + the
    signal's number)."""
    with _StopSignals() as stop, _lines_of_their_own(bar):
        try:
            return run(stop.event), 0
        except JobStopped as e:
            bar.end()
            sys.stderr.write(stopped_line(signal.Signals(stop.received).name, e) + "\n")
            return None, 128 + stop.received
        finally:
            bar.end()


def _run_queue(jobs, prog: str) -> int:
    """Run a queue (:func:`vs_uav.app.queue.run_queue`) with its lines on stderr; exit status 1
    when a file failed, 128 + the signal's number when stopped."""
    from vs_uav.app.queue import run_queue

    bar = _QueueBar(prog)
    result, code = _interruptible(bar, lambda stop: run_queue(jobs, bar, stop), lambda sig, e: (
        f"{prog}: stopped by {sig}: {e}; the files finished before are kept, and the same command renders the rest"))
    if code:
        return code
    print(f"{prog}: {result.summary()}", file=sys.stderr)
    return 0 if result.ok else 1


def _run(job: UpscaleJob, prog: str) -> int:
    """Run ``job`` (:func:`vs_uav.app.job.run_job`) with a progress line on stderr.

    SIGINT, SIGTERM and SIGHUP stop vspipe and ffmpeg (or the workers), remove the partial
    output and the script's folder, and say in one line what was kept and how to resume; the
    exit status is then 128 + the signal's number (130, 143, 129)."""
    bar = _ProgressBar(prog)
    try:
        result, code = _interruptible(bar, lambda stop: run_job(job, bar, stop), lambda sig, e: (
            f"{prog}: stopped by {sig}: {e.ended}, no partial {job.output} or temporary files left; {e.kept}"))
    except JobError as e:
        raise SystemExit(f"{prog}: {e}")
    if code:
        return code
    if result.summary:
        print(f"{prog}: wrote {result.output}: {result.summary}", file=sys.stderr)
        return 0
    cached = len(bar.clock.cached)
    print(f"{prog}: wrote {result.output} in {result.seconds:.0f} s" +
          (f" ({cached} of {bar.clock.chunks} chunks from the cache)" if cached else ""), file=sys.stderr)
    return 0


@contextlib.contextmanager
def _lines_of_their_own(bar: _ProgressBar) -> Iterator[None]:
    """A log line (a worker restarted, -v) ends the progress line first."""
    def end_line(record) -> bool:
        bar.end()
        return True

    handlers = logging.getLogger().handlers
    for handler in handlers:
        handler.addFilter(end_line)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(end_line)


def cmd_script(args: argparse.Namespace) -> int:
    """Write the .vpy (and print the matching command) without running it."""
    from vs_uav.app.plan import default_output, default_script, plan_preset_render
    from vs_uav.media.output import absolute
    from vs_uav.media.probe import interlaced_message, probe
    from vs_uav.media.script import reading_script

    preset = _resolve(args, "uav script")
    if preset.settings.prompt.strip().lower() == "auto":
        raise SystemExit("uav script: --prompt auto: accepted by uav upscale; for a script, run `uav caption` "
                         "first and pass --captions FILE")
    # The .vpy may be run from anywhere: every path in it and its command is absolute.
    source = absolute(args.input)
    script = absolute(args.script) if args.script else default_script(source)
    output = absolute(args.output) if args.output else default_output(source, preset.encoder)
    media = None
    from vs_uav.media.sequence import is_sequence

    if is_sequence(source):
        raise SystemExit(f"uav script: input {source} is an image sequence; accepted: a video file (uav upscale "
                         "reads image sequences, with --fps)")
    if not source.is_file():  # a folder, or nothing there: a script of it would fail in vspipe
        from vs_uav.media.probe import not_a_video

        raise SystemExit(f"uav script: {not_a_video(source)}" + ("" if source.is_dir() else
                                                                 "; accepted: a video file that exists"))
    try:
        media = probe(source, reading_script(source))
    except ValueError as e:
        raise SystemExit(f"uav script: {e}")
    if media.interlaced:
        raise SystemExit(f"uav script: {interlaced_message(source, media, option=False)}")
    result = plan_preset_render(preset, source, script, output, namespace=not args.import_style, media=media,
                                probe=False)
    if result.note:
        sys.stderr.write(escaped(f"uav script: warning: {result.note}") + "\n")
    result.write()
    print(result.command)
    return 0


def _model_dir_arg(value: str | None) -> Path:
    if value:
        return Path(value).expanduser()
    from vs_uav.weights.folder import default_model_dir

    return default_model_dir()


def _manifests(args: argparse.Namespace):
    from vs_uav.weights.verify import load_manifests

    return load_manifests(args.manifests) if args.manifests else None


class _ByteProgress:
    """One updating stderr line per file: name, MiB done, percent, rate."""

    def __init__(self) -> None:
        self.label, self.started, self.shown, self.first = "", 0.0, 0.0, 0

    def __call__(self, label: str, done: int, total: int) -> None:
        now = time.monotonic()
        if label != self.label:
            self.label, self.started, self.shown, self.first = label, now, 0.0, done
        finished = 0 < total <= done  # total 0: the server did not say
        if not finished and now - self.shown < 0.5:
            return  # a few updates a second are enough
        self.shown = now
        elapsed = now - self.started
        rate = f"{(done - self.first) / elapsed / 2**20:.1f} MiB/s" if elapsed > 0.5 else ""
        if total > 0:
            text = (f"{done / 2**20:.1f}/{total / 2**20:.1f} MiB "
                    f"({100 * done / total:.0f} %{', ' + rate if rate else ''})")
        else:
            text = f"{done / 2**20:.1f} MiB{' (' + rate + ')' if rate else ''}"
        sys.stderr.write(f"\r{label}: {text}{chr(10) if finished else ''}")
        sys.stderr.flush()


def _say(message: str) -> None:
    sys.stderr.write(message + "\n")


def cmd_download(args: argparse.Namespace) -> int:
    """Fetch the official weights into the model folder, verified, resumable."""
    from vs_uav.weights.download import LICENCE_NOTE, download
    from vs_uav.weights.verify import WeightsError

    if args.captioner:
        return _download_captioner(args)
    dest = _model_dir_arg(args.dir)
    _say(f"uav download: {LICENCE_NOTE}")
    _say(f"uav download: {args.source} -> {dest}")
    try:
        download(dest, args.source, vae_video=not args.no_vae_video, raft=not args.no_raft,
                 manifests=_manifests(args), force=args.force, progress=_ByteProgress(), log=_say)
    except WeightsError as e:
        raise SystemExit(f"uav download: {e}")
    if args.dir and not os.environ.get("UAV_MODEL_DIR") and dest != _model_dir_arg(None):
        _say(f"uav download: to use this folder, set UAV_MODEL_DIR={dest} or pass model='{dest}'")
    return 0


def _download_captioner(args: argparse.Namespace) -> int:
    from vs_uav.weights.captioners import download_captioner
    from vs_uav.weights.folder import WeightsError

    source = "" if args.source == "gdrive" else args.source
    try:
        download_captioner(args.captioner, Path(args.dir).expanduser() if args.dir else None, source,
                           progress=_ByteProgress(), log=lambda text: _say(f"uav download: {text}"))
    except (ValueError, WeightsError) as e:
        raise SystemExit(f"uav download: {e}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """Rewrite a verified model folder to safetensors."""
    from vs_uav.weights.convert import convert
    from vs_uav.weights.verify import WeightsError

    folder = _model_dir_arg(args.dir)
    try:
        written = convert(folder, fp16=args.fp16, manifests=_manifests(args), log=_say)
    except WeightsError as e:
        raise SystemExit(f"uav convert: {e}")
    _say(f"uav convert: {len(written)} file(s) written in {folder}; the loaders now read them "
         "(the .bin files may be deleted)" if written else f"uav convert: nothing to convert in {folder}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check the installation, one line each; non-zero exit when something required fails."""
    from vs_uav.app.doctor import run_checks

    checks = run_checks(Path(args.model).expanduser() if args.model else None, _manifests(args))
    for check in checks:
        print(check.line(), flush=True)
    failed = [c.name for c in checks if c.status == "fail"]
    print(f"uav doctor: {'FAILED: ' + ', '.join(failed) if failed else 'all required checks passed'}")
    return 1 if failed else 0


def cmd_selftest(args: argparse.Namespace) -> int:
    """The whole stack end to end on a tiny random model: plugin, vspipe, torch, ffmpeg."""
    from vs_uav.app.selftest import CLIP_FRAMES, CLIP_HEIGHT, CLIP_WIDTH, RANDOM_WEIGHTS_NOTE, SCALE, run_selftest

    print(f"uav selftest: {RANDOM_WEIGHTS_NOTE}", flush=True)
    result = run_selftest(Path(args.keep).expanduser() if args.keep else None,
                          log=lambda m: _say(f"uav selftest: {m}"), device=args.device)
    if not result.ok:
        print(f"uav selftest: FAILED at {result.error}", flush=True)
        return 1
    kept = f"; files kept in {args.keep}" if args.keep else ""
    print(f"uav selftest: OK (vspipe, core.uav.Upscale on {args.device}, ffmpeg: {CLIP_FRAMES} frames "
          f"{CLIP_WIDTH}x{CLIP_HEIGHT} -> {CLIP_WIDTH * SCALE}x{CLIP_HEIGHT * SCALE} in {result.seconds:.0f} s{kept})",
          flush=True)
    return 0


def _add_demo(add) -> None:
    """``uav demo`` and its options (``add``: the subparsers' add_parser)."""
    demo = add("demo", help="the main job in miniature: a real clip through core.uav.Upscale, vspipe and ffmpeg/x265 "
                            "(tiny reference model)")
    demo.add_argument("--model", default=os.environ.get("UAV_MODEL_DIR", str(DEMO_MODEL)),
                      help="model folder (default: $UAV_MODEL_DIR, else the tiny reference model with random weights)")
    demo.add_argument("--input", default=str(DEMO_VIDEO), help="source video (default: the shared old animation)")
    demo.add_argument("--output", default=str(Path("out") / "demo.mkv"),
                      help="output file (default: out/demo.mkv in the current folder)")
    demo.add_argument("--frames", type=int_arg, default=12, help="frames of the excerpt, from the first (default: 12)")
    demo.add_argument("--width", type=int_arg, default=64, help="the excerpt's width before the 4x upscale (default: 64)")
    demo.add_argument("--height", type=int_arg, default=48, help="the excerpt's height before the 4x upscale (default: 48)")
    demo.add_argument("--steps", type=int_arg, default=4, help="denoising steps; flow propagation at the last one "
                      "(default: 4)")
    demo.add_argument("--seed", type=int_arg, default=0, help="random seed (default: 0)")
    demo.add_argument("--vae", default="3d", choices=["3d", "video"], help="decoder: '3d' (default) or 'video'")
    demo.set_defaults(func=cmd_demo)


_VERBOSE_HELP = "log progress and details to stderr (before or after the command's name)"


def build_parser() -> argparse.ArgumentParser:
    from vs_uav import __version__

    parser = argparse.ArgumentParser(prog="uav", description="Upscale-A-Video video super-resolution")
    parser.add_argument("-v", "--verbose", action="store_true", help=_VERBOSE_HELP)
    parser.add_argument("--version", action="version", version=f"uav {__version__}")
    # -v after the command too (`uav upscale in.mp4 -v`); SUPPRESS: absent there, the value before stays.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=_VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    add = functools.partial(sub.add_parser, parents=[common])
    _add_demo(add)

    _add_upscale(add)
    _add_script(add)
    _add_conform(add)
    _add_caption(add)
    _add_report(add)
    _add_model_commands(add)
    return parser


def _add_upscale(add) -> None:
    from vs_uav.media.encoder import ENCODER_SETTINGS
    from vs_uav.media.probe import DEINTERLACERS
    from vs_uav.settings import SETTINGS

    up = add("upscale", help="upscale a video file: vspipe into ffmpeg, audio copied")
    up.add_argument("input", nargs="+", help="source video, or an image sequence (a folder of numbered images, or "
                    "their pattern, e.g. scan/reel1_%%07d.dpx); several files, folders of videos or glob patterns "
                    "make a queue, every file checked before the first renders")
    up.add_argument("-o", "--output", help="output file (default: next to the source, e.g. clip.uav.mkv; "
                    ".mov for prores); for a queue a folder (each output named after its source) or a pattern "
                    "with {stem}, e.g. out/{stem}.mkv")
    _add_preset_option(up)
    _add_setting_options(up, SETTINGS)
    _add_setting_options(up, ENCODER_SETTINGS)
    up.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                    help="keep the finished chunks in the work folder next to the output (.OUTPUT.uav-work), so "
                         "that after Ctrl+C or a crash the same command resumes where it stopped; the folder goes "
                         "once the output is verified (default); --no-resume keeps nothing; an explicit "
                         "--cache-dir is used instead")
    _add_overwrite(up)
    up.add_argument("--fps", type=float_arg, metavar="RATE", help="an image sequence's frame rate (default: 24; "
                    "23.976 and its kind are read as 24000/1001)")
    up.add_argument("--frames", metavar="FIRST-LAST", help="render only the source's frames FIRST to LAST "
                    "(from 0, LAST included), e.g. 100-199: the output starts cold there, with that part of the "
                    "audio and the timecode of frame FIRST")
    up.add_argument("--deinterlace", choices=DEINTERLACERS, default="none",
                    help="an interlaced source: 'none' refuses it (default); 'bwdif' first deinterlaces it with "
                         "ffmpeg's bwdif filter, one frame per field (twice the frame rate)")
    up.add_argument("--captioner", metavar="NAME", help="with --prompt auto: the captioner that captions each "
                    "scene into the captions file (--captions, default OUTPUT.captions.tsv; an existing one is "
                    "used as it is): " + _captioner_names() + "; default florence-2")
    _add_captioner_bits(up)
    _add_cluster_arguments(up)
    up.set_defaults(func=cmd_upscale)


def _captioner_names() -> str:
    from vs_uav.weights.captioners import CAPTIONERS

    return ", ".join(CAPTIONERS)


def _add_caption(add) -> None:
    from vs_uav.weights.captioners import DEFAULT_CAPTIONER

    ca = add("caption", help="caption each scene of a video into a captions file to review and edit, then "
             "render with --captions FILE")
    ca.add_argument("input", help="source video, or an image sequence")
    ca.add_argument("-o", "--output", help="the captions file (default: next to the source, clip.captions.tsv; "
                    "an image sequence's: captions.tsv in its folder)")
    ca.add_argument("--captioner", default=DEFAULT_CAPTIONER, metavar="NAME",
                    help=f"{_captioner_names()} (default: {DEFAULT_CAPTIONER}); fetched by `uav download --captioner NAME`")
    ca.add_argument("--captioner-dir", metavar="DIR", help="the captioner's folder (default: where `uav download "
                    "--captioner` puts it)")
    ca.add_argument("--scene-cuts", default="auto", help="where scenes start: 'auto' (detected, as the render "
                    "detects them), 'none' or a cut list file")
    ca.add_argument("--scene-threshold", type=float_arg, default=0.1, help="the detector's threshold (as uav upscale)")
    ca.add_argument("--device", default="auto", help="auto (a second GPU when there is one, else the first, else "
                    "the CPU), cpu, cuda or cuda:N")
    _add_captioner_bits(ca)
    ca.add_argument("--max-memory", type=float_arg, default=0.0, metavar="GIB", help="the memory the captioner may "
                    "take (its weights and generation); refused in one line when it needs more (default: no budget)")
    ca.add_argument("--fps", type=float_arg, metavar="RATE", help="an image sequence's frame rate (default: 24)")
    ca.add_argument("--no-cache", action="store_true", help="caption every scene again, ignoring the cache")
    ca.set_defaults(func=cmd_caption)


def _add_captioner_bits(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--captioner-bits", choices=("none", "8bit", "4bit"), default="none", help="load the "
                        "captioner's weights in 8 or 4 bits (bitsandbytes, CUDA only: pip install "
                        "'vs-uav[quantize]'), as the official --load_8bit_llava (default: none)")


def cmd_caption(args: argparse.Namespace) -> int:
    """Caption each scene (progress on stderr), write the captions file, print a summary."""
    from vs_uav.app.captions import CaptionJob, CaptionJobError, default_captions_path, run_captions
    from vs_uav.media.output import absolute
    from vs_uav.media.sequence import check_fps, find_sequence, fps_line, is_sequence

    prog = "uav caption"
    source, prepare = Path(args.input), ()
    try:
        if is_sequence(source):
            source, prepare = find_sequence(source).pattern, (fps_line(check_fps(args.fps)),)
        elif not source.is_file():
            from vs_uav.media.probe import not_a_video

            raise ValueError(not_a_video(source))
        output = absolute(args.output) if args.output else default_captions_path(absolute(source))
        job = CaptionJob(absolute(source), output, args.captioner,
                         Path(args.captioner_dir).expanduser() if args.captioner_dir else None, args.scene_cuts,
                         args.scene_threshold, prepare, args.device, args.captioner_bits, args.max_memory,
                         cache=not args.no_cache)
        result = run_captions(job, lambda done, total: sys.stderr.write(f"\r{prog}: scene {done}/{total}\033[K"))
    except (ValueError, CaptionJobError) as e:
        raise SystemExit(f"{prog}: {e}")
    sys.stderr.write("\n")
    print(f"{prog}: {result.summary}")
    print(f"{prog}: edit it, then: uav upscale {shlex_quote(args.input)} --captions {shlex_quote(str(result.path))}")
    return 0


def _add_report(add) -> None:
    rp = add("report", help="measure renders of a source: fidelity, temporal stability (E*warp), flicker and "
             "colour, per frame and per scene, into an HTML page (or a PNG, JSON or CSV)")
    rp.add_argument("source", help="the source video (or image sequence) the outputs were rendered from")
    rp.add_argument("outputs", nargs="+", metavar="output", help="renders of it (4x its size, all its frames); "
                    "several: side by side, e.g. two presets")
    rp.add_argument("-o", "--output", dest="report", default="report.html", help="the report: .html (plots and "
                    "crops embedded; JSON and CSV beside it), .png (a one-page summary), .json or .csv "
                    "(default: report.html)")
    rp.add_argument("--reference", metavar="HQ", help="a high-quality original of the outputs' size: PSNR and "
                    "SSIM against it")
    rp.add_argument("--flow", default="auto", help="optical flow for E*warp: auto (RAFT when the model folder "
                    "has its weights and a CUDA GPU runs it, else DIS), raft (also on a CPU: about 12x slower) or "
                    "dis (default: auto)")
    rp.add_argument("--model", metavar="DIR", help="the model folder RAFT's weights are read from (default: "
                    "where `uav download` puts it)")
    rp.add_argument("--scene-cuts", default="auto", help="where scenes start: 'auto' (detected, as the render "
                    "detects them), 'none' or a cut list file; nothing is measured across a cut")
    rp.add_argument("--scene-threshold", type=float_arg, default=0.1, help="the detector's threshold (as uav upscale)")
    rp.add_argument("--frames", metavar="FIRST-LAST", help="the outputs render the source's frames FIRST to LAST "
                    "(uav upscale --frames, a conform's piece): the source is cut to them")
    rp.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """Measure (progress on stderr), write the report, print each output's figures."""
    from vs_uav.app.report import ReportError, ReportJob, run_report
    from vs_uav.media.output import absolute

    prog = "uav report"
    job = ReportJob(absolute(args.source), tuple(absolute(o) for o in args.outputs), absolute(args.report),
                    absolute(args.reference) if args.reference else None, args.flow,
                    absolute(args.model) if args.model else None, args.scene_cuts, args.scene_threshold,
                    _frame_range(args.frames, prog))
    try:
        report, files = run_report(job, lambda done, total: sys.stderr.write(f"\r{prog}: frame {done}/{total}\033[K"))
    except ReportError as e:
        raise SystemExit(f"{prog}: {e}")
    except KeyboardInterrupt:  # the files are written at the end, each whole: nothing is half-written
        sys.stderr.write(f"\n{prog}: interrupted; nothing written\n")
        return 130
    sys.stderr.write("\n")
    print(report.summary())
    print(f"{prog}: written {', '.join(str(f) for f in files)}")
    return 0


def shlex_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def _add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    cl = parser.add_argument_group("cluster", "render scene-cut segments on a Ray cluster (pip install "
                               "'vs-uav[cluster]'); the frames are a one-machine render's")
    cl.add_argument("--cluster", metavar="local|HOST:PORT", nargs="?", const="", help="'local': a Ray instance on "
                    "this machine; HOST:PORT: a running Ray cluster this machine is a node of (ray start "
                    "--address=...), or ray://HOST:PORT; no value: $RAY_ADDRESS if set, else 'local' (`uav doctor` "
                    "says which); the output's folder and the input must be on storage every node sees")
    cl.add_argument("--workers", metavar="N", help="N CPU workers (default: one per GPU of the cluster, else one)")
    cl.add_argument("--segment-seconds", metavar="S", help="consecutive scenes are merged into segments of up "
                    "to S seconds of video (default: 60); a longer scene is a segment of its own")
    cl.add_argument("--split-long", metavar="S", help="split scenes longer than S seconds too; the price: each "
                    "later piece starts cold (nothing carried across the split), so its frames differ from a "
                    "one-machine render's (default: never split)")
    cl.add_argument("--keep-work", action="store_true", default=False, help="keep the work folder (script, "
                    "segments) next to the output after a successful render")


def _add_conform(add) -> None:
    from vs_uav.media.encoder import ENCODER_SETTINGS
    from vs_uav.settings import SETTINGS

    co = add("conform", help="restore what an edit uses (OpenTimelineIO: .otio, .edl, .xml, .fcpxml, .aaf, "
             ".kdenlive): its source ranges with handles, and the edit relinked to them")
    co.add_argument("timeline", help="the edit: any timeline OpenTimelineIO reads")
    co.add_argument("-o", "--output", metavar="FOLDER", help="the folder for the restored pieces and the relinked "
                    "timeline (EDIT.uav.otio, and EDIT.uav.EXT in the edit's format where its adapter writes it)")
    co.add_argument("--plan", action="store_true", help="only print the pieces the edit needs and the summary")
    co.add_argument("--handles", type=int_arg, default=12, help="frames added before and after each used range, "
                    "clamped to the media (default: 12)")
    co.add_argument("--search", action="append", default=[], metavar="DIR", type=Path,
                    help="look for media not found where the timeline says in DIR and its subfolders, by file "
                         "name, clip name and reel, choosing by timecode among files of one name (repeatable)")
    co.add_argument("--media-map", metavar="CSV", type=Path,
                    help="a CSV of name,path rows: where the media of a clip name, file name or reel is")
    co.add_argument("--clamp", action="store_true",
                    help="render what exists of a clip that needs frames past its media's end (or before its "
                         "start), with a warning; without it such a clip is refused")
    co.add_argument("--rate", type=float_arg, help="an EDL's frame rate (an EDL does not say it; default: 24)")
    _add_preset_option(co)
    _add_setting_options(co, SETTINGS)
    _add_setting_options(co, ENCODER_SETTINGS)
    co.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                    help="keep each piece's finished chunks while it renders (as uav upscale); pieces finished by "
                         "an earlier run are skipped either way")
    _add_overwrite(co)
    _add_cluster_arguments(co)
    co.set_defaults(func=cmd_conform)


def cmd_conform(args: argparse.Namespace) -> int:
    """The conform's plan (one line per piece, then the summary) on stdout; without --plan the
    pieces rendered as one queue and the relinked timeline written (vs_uav.app.relink)."""
    from vs_uav.app.conform import ConformError, align_plan, describe, plan_conform
    from vs_uav.app.relink import run_conform

    prog = "uav conform"
    if not args.plan and not args.output:
        raise SystemExit(f"{prog}: -o FOLDER is needed: the folder for the restored pieces and the relinked "
                         "timeline (or --plan to see the pieces only)")
    preset = _resolve(args, prog)
    options = {} if args.plan else dict(cluster=_cluster_options(args, prog), resume=args.resume,
                                        overwrite=args.overwrite)
    try:
        plan = plan_conform(Path(args.timeline), args.handles, args.search, rate=args.rate,
                            media_map=args.media_map, clamp=args.clamp)
        if not args.plan:  # the render's starts, on each scene's window grid (a little decoding)
            plan = align_plan(plan, preset.encoder.scene_cuts, preset.encoder.scene_threshold)
    except ConformError as e:
        raise SystemExit("\n".join(f"{prog}: {line}" for line in str(e).split("\n")))
    for line in plan.warnings:
        print(escaped(f"{prog}: warning: {line}"), file=sys.stderr)
    for line in describe(plan):
        print(line)
    print(plan.summary())
    if args.plan:
        print("(a render moves each piece's start back by up to 5 frames, onto its scene's window grid)")
        return 0
    bar = _QueueBar(prog)
    try:
        result, code = _interruptible(bar, lambda stop: run_conform(plan, Path(args.output), preset.settings,
                                                                    preset.encoder, bar, stop, **options),
                                      lambda sig, e: f"{prog}: stopped by {sig}: {e}; the pieces finished before "
                                                     "are kept, and the same command renders the rest")
    except (JobError, ConformError) as e:
        raise SystemExit(f"{prog}: {e}")
    if code:
        return code
    print(f"{prog}: {result.queue.summary()}", file=sys.stderr)
    for path in result.timelines:
        print(f"{prog}: wrote the relinked timeline {path}", file=sys.stderr)
    if result.note:
        print(f"{prog}: warning: {result.note}", file=sys.stderr)
    if not result.timelines:
        print(f"{prog}: no relinked timeline: a piece failed (above); the same command renders what is left",
              file=sys.stderr)
    return 0 if result.ok else 1


def _add_script(add) -> None:
    from vs_uav.media.encoder import ENCODER_SETTINGS
    from vs_uav.settings import SETTINGS

    sc = add("script", help="write a .vpy for a source and print the encoder command")
    sc.add_argument("input", help="source video")
    sc.add_argument("-o", "--output", help="the encoder's output file (default: next to the source, "
                    "e.g. clip.uav.mkv)")
    sc.add_argument("--script", help="where to write the .vpy (default: next to the source, clip.uav.vpy)")
    sc.add_argument("--import-style", action="store_true", help="call vs_uav.upscale instead of core.uav.Upscale")
    _add_preset_option(sc)
    _add_setting_options(sc, SETTINGS)
    _add_setting_options(sc, ENCODER_SETTINGS)
    sc.set_defaults(func=cmd_script)


def _add_model_commands(add) -> None:
    """download, convert, doctor and selftest."""
    manifests_help = ("folder of key/shape manifests to verify against (default: the official full-size "
                      "ones shipped with vs-uav; for finetuned or test models of another size)")
    dl = add("download", help="fetch the official weights into the model folder, verified and resumable")
    dl.add_argument("--from", dest="source", default="gdrive", metavar="SOURCE",
                    help="'gdrive' (the official Google Drive folder, default), hf:OWNER/NAME (a Hugging Face "
                         "repository), or a local folder or archive (.zip, .tar.*)")
    dl.add_argument("--dir", help="model folder (default: $UAV_MODEL_DIR, else the user data folder)")
    dl.add_argument("--no-vae-video", action="store_true", help="skip the video VAE (vae='video')")
    dl.add_argument("--no-raft", action="store_true", help="skip the RAFT weights (flow='dis' is used)")
    dl.add_argument("--force", action="store_true", help="fetch again even if the folder verifies")
    dl.add_argument("--manifests", help=manifests_help)
    dl.add_argument("--captioner", metavar="NAME", help="fetch a captioner instead (" + _captioner_names() +
                    ") from the Hugging Face hub, or --from FOLDER; into --dir or the captioners' folder "
                    "($UAV_CAPTIONER_DIR, else beside the model)")
    dl.set_defaults(func=cmd_download)

    cv = add("convert", help="rewrite a verified model folder to safetensors (faster, no pickle)")
    cv.add_argument("--dir", help="model folder (default: $UAV_MODEL_DIR, else the user data folder)")
    cv.add_argument("--fp16", action="store_true", help="store floating-point tensors in half precision")
    cv.add_argument("--manifests", help=manifests_help)
    cv.set_defaults(func=cmd_convert)

    dr = add("doctor", help="check the installation: Python, VapourSynth, vspipe, plugin, ffmpeg, "
                                       "torch, devices, model folder, disk")
    dr.add_argument("--model", help="model folder to verify (default: $UAV_MODEL_DIR, else the user data folder)")
    dr.add_argument("--manifests", help=manifests_help)
    dr.set_defaults(func=cmd_doctor)

    st = add("selftest", help="render a synthetic clip through core.uav.Upscale under vspipe into "
                                         "ffmpeg with a tiny random model (no download; tests the installation, "
                                         "not quality)")
    st.add_argument("--device", default="cpu", help="device for the filter: cpu (default), cuda, cuda:N or auto")
    st.add_argument("--keep", metavar="DIR", help="work in DIR and keep the model, script, logs and output there")
    st.set_defaults(func=cmd_selftest)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except SystemExit as e:
        # A refusal is one line, whatever a file name or tag in it holds (a newline, a CR, an escape).
        if isinstance(e.code, str):
            raise SystemExit(_one_line_each(e.code)) from None
        raise


def _one_line_each(text: str) -> str:
    """``text``'s lines (each starting with the program's name) with whatever a name or tag
    in them holds escaped: a line break inside one stays in its line as ``\\n``."""
    lines: list[str] = []
    for piece in text.split("\n"):
        if lines and not piece.startswith("uav"):
            lines[-1] += "\\n" + escaped(piece)
        else:
            lines.append(escaped(piece))
    return "\n".join(lines)
