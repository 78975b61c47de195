"""``core.uav.Upscale`` / ``vs_uav.upscale``: Upscale-A-Video as a VapourSynth filter.

The VapourSynth glue around :class:`vs_uav.engine.driver.ChunkDriver`: clip checks, the
conversion to RGB and back, the device's worker thread, frame props, and errors reported
per frame. The driver computes a chunk once when one of its frames is asked for, keeps
boundary states for the next chunk and, with ``cache_dir``, finished chunks on disk, so a
killed render resumes where it stopped with byte-identical frames. Nothing is written to
stdout: under vspipe it is the video.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import vapoursynth as vs

from vs_uav.engine.cache import ENGINES, check_model_folder, engine_for, model_dir_of, resolve_device
from vs_uav.errors import UavError
from vs_uav.settings import UpscaleSettings
from vs_uav.weights.folder import ModelLoadError

logger = logging.getLogger(__name__)
NAME = "uav.Upscale"
SCALE = 4
MIN_SIZE = 8
# VapourSynth R7x+ names the colour-range frame prop _Range (it was _ColorRange before).
RANGE_PROP = "_Range"


class UpscaleError(UavError, vs.Error):
    pass


def _fail(message: str) -> UpscaleError:
    return UpscaleError(f"{NAME}: {message}")


def _log(core: vs.Core, message: str) -> None:
    """Progress to VapourSynth's log (vspipe shows it on stderr; the vapoursynth module also
    forwards Python logging there, hence debug level for the copy)."""
    logger.debug(message)
    try:
        core.log_message(vs.MESSAGE_TYPE_INFORMATION, f"{NAME}: {message}")
    except Exception:  # logging must never break a render
        pass


def _on_core_destroyed() -> None:
    ENGINES.clear()  # the core's filters are gone: the models they held need not stay


def _release_engines_with_the_core() -> None:
    with contextlib.suppress(Exception):  # not registered yet in this environment
        vs.unregister_on_destroy(_on_core_destroyed)
    vs.register_on_destroy(_on_core_destroyed)


# -- frames <-> tensors -------------------------------------------------------------------------

def _frame_to_array(frame: vs.VideoFrame) -> np.ndarray:
    return np.stack([np.asarray(frame[p]) for p in range(3)])


def _write_frame(frame: vs.VideoFrame, data: np.ndarray) -> None:
    for p in range(3):
        np.copyto(np.asarray(frame[p]), data[p])


# -- the source -------------------------------------------------------------------------------

PROMPT_PROP = "UAVPrompt"  # a frame's own prompt (vs_uav.apply_captions sets it per scene)


def frame_prompt(props: Any) -> Optional[str]:
    """The ``UAVPrompt`` a frame carries, or None (the filter's ``prompt`` applies)."""
    value = props.get(PROMPT_PROP)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) and value.strip() else None


def chunk_source(rgb: vs.VideoNode):
    """The chunk driver's source: frames a..b-1 of the RGBS clip as (1, 3, T, H, W) in
    [-1, 1], the frames among them that start a scene (``_SceneChangePrev``) and the
    prompts they carry (``UAVPrompt``)."""
    import torch

    def read(a: int, b: int):
        frames = [rgb.get_frame(i) for i in range(a, b)]
        cuts = [i for i, f in zip(range(a, b), frames) if f.props.get("_SceneChangePrev", 0)]
        prompts = {i: p for i, f in zip(range(a, b), frames) if (p := frame_prompt(f.props)) is not None}
        video = torch.from_numpy(np.stack([_frame_to_array(f) for f in frames], axis=1)[None]) * 2 - 1
        return video, cuts, prompts

    return read


# -- the public function -------------------------------------------------------------------------

def _check_clip(clip: Any) -> vs.VideoNode:
    if not isinstance(clip, vs.VideoNode):
        raise _fail(f"clip must be a video clip (vs.VideoNode), got {type(clip).__name__}")
    if clip.format is None or clip.format.id == vs.NONE:
        raise _fail("clip has a variable format; accepted: a constant format (convert it first, e.g. "
                    "with core.resize.Bicubic(clip, format=vs.YUV420P8))")
    if clip.width == 0 or clip.height == 0:
        raise _fail("clip has a variable frame size; accepted: a constant size (resize it first)")
    if clip.width < MIN_SIZE or clip.height < MIN_SIZE:
        raise _fail(f"clip is {clip.width}x{clip.height}; accepted: at least {MIN_SIZE}x{MIN_SIZE}")
    if clip.format.color_family not in (vs.YUV, vs.RGB, vs.GRAY):
        raise _fail(f"clip format {clip.format.name} is not supported; accepted: YUV, RGB or GRAY")
    if clip.num_frames:
        _check_progressive(clip.get_frame(0).props)
    return clip


def _check_progressive(props: Any) -> None:
    """An interlaced frame (``_FieldBased`` 1 or 2) is refused: the model sees whole frames,
    and two fields woven together are not one."""
    field = int(props.get("_FieldBased", 0))
    if field in (1, 2):
        order = "top field first" if field == 2 else "bottom field first"
        raise _fail(f"clip is interlaced (_FieldBased={field}, {order}); accepted: progressive frames — "
                    f"deinterlace first, e.g. clip = core.resize.Bob(clip, tff={field == 2}) (one frame per "
                    "field), or ffmpeg's bwdif filter (uav upscale --deinterlace bwdif)")


def to_rgb(clip: vs.VideoNode) -> tuple[vs.VideoNode, dict[str, Any]]:
    """RGBS [0, 1], using the clip's colour props; unset ones default as VapourSynth users
    expect (709 for HD, 601 for SD; limited range for YUV, full for RGB)."""
    core = vs.core
    fmt = clip.format
    props = clip.get_frame(0).props
    hd = clip.width >= 1280 or clip.height >= 720
    matrix = props.get("_Matrix", vs.MATRIX_UNSPECIFIED)
    if matrix in (vs.MATRIX_UNSPECIFIED, vs.MATRIX_RGB) and fmt.color_family == vs.YUV:
        matrix = vs.MATRIX_BT709 if hd else vs.MATRIX_ST170_M
    # _Range in R7x+ (0 limited, 1 full, as resize takes it); _ColorRange (0 full, 1 limited)
    # from older sources. Transfer and primaries need no conversion: the model works on the
    # gamma-encoded RGB the matrix gives.
    rng = props.get(RANGE_PROP)
    if rng is None:
        with warnings.catch_warnings():  # reading the legacy name is what we want here
            warnings.simplefilter("ignore", DeprecationWarning)
            legacy = props.get("_ColorRange")
        rng = None if legacy is None else 1 - int(legacy)
    if rng is None:
        rng = vs.RANGE_FULL if fmt.color_family == vs.RGB else vs.RANGE_LIMITED
    info = {"matrix": int(matrix), "range": int(rng), "format": fmt}
    if fmt.color_family == vs.YUV:
        rgb = core.resize.Bicubic(clip, format=vs.RGBS, matrix_in=matrix, range_in=rng)
    elif fmt.color_family == vs.GRAY:
        rgb = core.resize.Bicubic(clip, format=vs.GRAYS, range_in=rng, range=vs.RANGE_FULL)
        rgb = core.std.ShufflePlanes([rgb] * 3, [0, 0, 0], vs.RGB)
    else:
        rgb = core.resize.Bicubic(clip, format=vs.RGBS, range_in=rng)
    return rgb, info


def _from_rgb(rgb: vs.VideoNode, info: dict[str, Any]) -> vs.VideoNode:
    core = vs.core
    fmt = info["format"]
    if fmt.color_family == vs.YUV:
        return core.resize.Bicubic(rgb, format=fmt.id, matrix=info["matrix"], range=info["range"])
    if fmt.color_family == vs.GRAY:
        gray = core.std.ShufflePlanes(rgb, 0, vs.GRAY)  # the model's three planes, luma-like: take R
        return core.resize.Bicubic(gray, format=fmt.id, range_in=vs.RANGE_FULL, range=info["range"])
    return core.resize.Bicubic(rgb, format=fmt.id, range_in=vs.RANGE_FULL, range=info["range"])


# The frames a cluster worker renders (vs_uav.app.cluster): set around the evaluation of a
# generated script, so that its uav.Upscale call (native or not) renders only them.
_SEGMENT: contextvars.ContextVar[Optional[tuple[int, int]]] = contextvars.ContextVar("uav_segment", default=None)


@contextlib.contextmanager
def segment(start: int, stop: int) -> Iterator[None]:
    """Filters made inside this block render only frames ``start .. stop - 1`` (``_segment``)."""
    token = _SEGMENT.set((start, stop))
    try:
        yield
    finally:
        _SEGMENT.reset(token)


@contextlib.contextmanager
def excerpt(first: int, end: int) -> Iterator[None]:
    """An excerpt's script (``uav upscale --frames``, a conform's piece): the filter made in this
    block renders only frames ``first .. end - 1`` of its clip, with their own frame numbers
    (seeds, chunk grid, cut list) and a cold start at ``first``; the script then keeps those
    frames (``clip[first:end]``). Inside a :func:`segment` block, numbered in the excerpt's
    frames (a cluster worker rendering a segment of it), the segment's part of it."""
    if not 0 <= first < end:
        raise _fail(f"excerpt({first}, {end}); accepted: 0 <= first < end")
    outer = _SEGMENT.get()
    with segment(*((first + outer[0], first + outer[1]) if outer is not None else (first, end))):
        yield


def _check_range(start: int, stop: int, num_frames: int) -> None:
    if not 0 <= start < stop <= num_frames:  # as ChunkDriver says it
        raise _fail(f"frames {start}..{stop}; accepted: 0 <= start < stop <= {num_frames}")


class LazyDriver:
    """The filter's :class:`~vs_uav.engine.driver.ChunkDriver`, made (model loaded) on the first
    frame request; thread-safe: VapourSynth asks for frames from several threads, and the
    others wait for the one load. A failed load is remembered: the folder does not mend
    during a render, and every frame then fails at once with the same line."""

    def __init__(self, make):
        self._make = make
        self._lock = threading.Lock()
        self._driver = None
        self._error: Optional[UpscaleError] = None

    @property
    def loaded(self) -> bool:
        return self._driver is not None

    def get(self):
        with self._lock:
            if self._error is not None:
                raise self._error
            if self._driver is None:
                try:
                    self._driver = self._make()
                except UpscaleError as e:
                    self._error = e
                    raise
            return self._driver


def _make_driver(env: Any, settings: UpscaleSettings, rgb: vs.VideoNode, start: int, stop: Optional[int]):
    """The chunk driver of one uav.Upscale call, made in the VapourSynth environment ``env``
    (the filter's): loads (or reuses) the engine; every model call runs on the device's
    worker thread."""
    from vs_uav.engine.driver import STEP_PROGRESS, ChunkDriver

    core = vs.core  # the filter's, as make() runs in its environment
    started = time.monotonic()
    _log(core, f"loading the model from {model_dir_of(settings)}")
    try:
        engine, worker = engine_for(settings)
    except (ModelLoadError, ValueError) as e:
        raise _fail(str(e)) from None
    logger.debug("%s: model ready in %.1f s", NAME, time.monotonic() - started)

    def run(fn, *args: Any, **kwargs: Any) -> Any:
        # The worker thread has no VapourSynth environment of its own: in this one, what the
        # model code logs (step progress, a too long prompt) reaches VapourSynth's log.
        def call() -> Any:
            with env.use():
                return fn(*args, **kwargs)

        return worker.run(call)

    def progress(step: int, steps: int, k: int, chunks: int) -> None:
        # One log line per denoising step: `uav upscale` (vs_uav.media.render) parses it for its bar.
        _log(core, STEP_PROGRESS.format(chunk=k + 1, chunks=chunks, step=step, steps=steps))

    try:
        return ChunkDriver(engine, settings, rgb.num_frames, chunk_source(rgb), start=start, stop=stop, run=run,
                           progress=progress, log=lambda message: _log(core, message))
    except ValueError as e:
        raise _fail(str(e)) from None


def upscale(clip: vs.VideoNode, _segment: Optional[tuple[int, int]] = None, **kwargs: Any) -> vs.VideoNode:
    """Upscale-A-Video 4x super-resolution; see ``vs_uav.settings.UpscaleSettings`` for every
    parameter. Returns the input's format at 4x width and height, same frame count, rate and props.

    ``_segment=(start, stop)`` (private, for the cluster's workers; default: the enclosing
    :func:`segment` block's): only those frames can be requested, and ``start`` is a cold
    start, so a segment starting at a scene cut gives exactly the whole render's frames."""
    clip = _check_clip(clip)
    settings = _check_settings(kwargs)
    start, stop = _segment if _segment is not None else _SEGMENT.get() or (0, None)
    rgb, info = to_rgb(clip)
    _check_range(start, rgb.num_frames if stop is None else stop, rgb.num_frames)
    core, env = vs.core, vs.get_current_environment()
    _release_engines_with_the_core()

    def make():
        with env.use():
            return _make_driver(env, settings, rgb, start, stop)

    blank = core.std.BlankClip(rgb, width=clip.width * SCALE, height=clip.height * SCALE, keep=True)
    # VapourSynth reports an exception raised here with a Python traceback; the plugin's Guard
    # turns an _UAVError prop into a one-line frame error instead.
    guard = getattr(getattr(core, "uav", None), "Guard", None)
    render = _frame_renderer(LazyDriver(make), settings, guard is not None)
    out = core.std.ModifyFrame(blank, clips=[blank, clip], selector=render)
    out = _from_rgb(out, info)
    if guard is not None:
        out = guard(out)
    # Output props: the input's, except what the conversion rightly changed.
    return out


def _check_settings(kwargs: dict[str, Any]) -> UpscaleSettings:
    """The call's settings, and the cheap checks now, so that bad input fails at once; the
    weights load on the first frame request (vspipe --info, or a script being edited, never
    waits for them)."""
    try:
        settings = UpscaleSettings.from_kwargs(**kwargs)
    except ValueError as e:
        raise _fail(str(e)) from None
    try:
        resolve_device(settings.device, settings.dtype)
        check_model_folder(model_dir_of(settings), settings)
    except (ModelLoadError, ValueError) as e:
        raise _fail(str(e)) from None
    if settings.cache_dir:
        from vs_uav.engine.state import check_writable

        try:
            check_writable(Path(settings.cache_dir).expanduser())
        except ValueError as e:
            raise _fail(str(e)) from None
    return settings


def _frame_renderer(driver: LazyDriver, settings: UpscaleSettings, guarded: bool):
    """ModifyFrame's selector: frame ``n`` of the chunk the driver computes, with the input's
    props (``f[1]``) and the filter's. A failure is an ``_UAVError`` prop when the plugin's
    Guard is there (``guarded``), else a vs.Error."""

    def render(n: int, f: list[vs.VideoFrame]) -> vs.VideoFrame:
        try:
            _check_progressive(f[1].props)  # a clip may turn interlaced after its first frame
            chunks = driver.get()
            k = chunks.chunk_of(n)
            chunk = chunks.output(k).frames
            data = ((chunk[0, :, n - chunks.bounds[k][0]] + 1) * 0.5).clamp(0, 1).numpy()
        except Exception as e:  # reported for the frames it affects; vspipe stops cleanly
            logger.debug("%s: frame %d failed", NAME, n, exc_info=True)
            message = str(e).strip().splitlines()[-1] if isinstance(e, vs.Error) and str(e).strip() else \
                f"{type(e).__name__}: {e}"
            message = message if message.startswith(NAME) else f"{NAME}: frame {n} failed: {message}"
            if not guarded:
                raise vs.Error(message) from None
            out = f[0].copy()
            out.props["_UAVError"] = message
            return out
        out = f[0].copy()
        _write_frame(out, data)
        props = out.props
        for key, value in f[1].props.items():
            props[key] = value
        props["_Matrix"] = vs.MATRIX_RGB
        props[RANGE_PROP] = vs.RANGE_FULL
        props["_UAVChunk"] = k
        props["_UAVSteps"] = settings.steps
        props["_UAVNoiseLevel"] = settings.noise_level
        props["_UAVGuidance"] = settings.guidance_scale
        props["_UAVSeed"] = settings.seed
        return out

    return render
