"""``core.uav.Upscale`` / ``vs_uav.upscale``: Upscale-A-Video as a VapourSynth filter.

A request for frame n computes the chunk that holds it once (all diffusion steps, in
lockstep), serves every frame of that chunk from a bounded in-memory cache, and keeps
the chunk's boundary state to continue with the next chunk. With ``cache_dir`` the
final latents and boundary states of finished chunks go to disk, keyed by a hash of the
source frames, the parameters and the model, so a killed render resumes where it stopped
and gives byte-identical frames. Nothing is written to stdout: under vspipe it is the video.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import numpy as np
import vapoursynth as vs

from .settings import UpscaleSettings

logger = logging.getLogger(__name__)
NAME = "uav.Upscale"
SCALE = 4
MIN_SIZE = 8
# Chunks of output frames kept in memory: the one being served and its neighbour.
MEMORY_CHUNKS = 2
# Boundary states kept in memory (each is steps x 2 frames of latents); older ones live on disk.
MEMORY_STATES = 4
LATENTS_FILE = "latents.safetensors"
# VapourSynth R7x+ names the colour-range frame prop _Range (it was _ColorRange before).
RANGE_PROP = "_Range"
STATE_FILE = "state.safetensors"


class UpscaleError(vs.Error):
    pass


def _fail(message: str) -> UpscaleError:
    return UpscaleError(f"{NAME}: {message}")


def default_model_dir() -> Path:
    """$UAV_MODEL_DIR, else the user data folder that `uav download` fills."""
    env = os.environ.get("UAV_MODEL_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("vs-uav")) / "upscale_a_video"


def _log(core: vs.Core, message: str) -> None:
    """Progress to VapourSynth's log (vspipe shows it on stderr; the vapoursynth module also
    forwards Python logging there, hence debug level for the copy)."""
    logger.debug(message)
    try:
        core.log_message(vs.MESSAGE_TYPE_INFORMATION, f"{NAME}: {message}")
    except Exception:  # logging must never break a render
        pass


# -- devices and engines (one loaded model per folder/vae/device/dtype) --------------------------

_ENGINES: dict[tuple, Any] = {}
_ENGINES_LOCK = threading.Lock()
_WORKERS: dict[str, "DeviceWorker"] = {}


class DeviceWorker:
    """The one thread that runs models on a device. VapourSynth calls filters from many
    threads; torch keeps per-thread resources (an OpenMP team, allocator arenas), so running
    every model call on one thread keeps speed and memory what the pipeline alone has."""

    def __init__(self, device: str):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"uav-{device}")

    def run(self, fn, *args: Any, **kwargs: Any) -> Any:
        return self._pool.submit(fn, *args, **kwargs).result()


def resolve_device(device: str, dtype: str) -> tuple[str, str]:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise _fail(f"device={device!r} but CUDA is not available here (torch {torch.__version__}); "
                        "accepted: 'cpu' or 'auto'")
        index = int(device[5:]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise _fail(f"device={device!r}; accepted: cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if dtype == "auto":
        dtype = "float16" if device.startswith("cuda") else "float32"
    if device == "cpu" and dtype == "float16":
        raise _fail("dtype='float16' is not supported on the CPU; accepted: 'float32', 'bfloat16'")
    if device.startswith("cuda") and dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise _fail(f"dtype='bfloat16' is not supported on {device}; accepted: 'float16', 'float32'")
    return device, dtype


def get_engine(model_dir: Path, vae: str, device: str, dtype: str, flow: str):
    from .loading import ModelLoadError
    from .pipeline import UpscalePipeline

    key = (str(model_dir.resolve()), vae, device, dtype, flow)
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            try:
                _ENGINES[key] = UpscalePipeline.from_pretrained(model_dir, vae=vae, device=device, dtype=dtype,
                                                                flow=flow)
            except (ModelLoadError, ValueError) as e:
                raise _fail(str(e)) from None
        worker_key = f"{device}:0" if device == "cuda" else device
        if worker_key not in _WORKERS:
            _WORKERS[worker_key] = DeviceWorker(worker_key)
        return _ENGINES[key], _WORKERS[worker_key]


# -- frames <-> tensors -------------------------------------------------------------------------

def _frame_to_array(frame: vs.VideoFrame) -> np.ndarray:
    return np.stack([np.asarray(frame[p]) for p in range(3)])


def _write_frame(frame: vs.VideoFrame, data: np.ndarray) -> None:
    for p in range(3):
        np.copyto(np.asarray(frame[p]), data[p])


# -- the renderer --------------------------------------------------------------------------------

class ChunkRenderer:
    """Computes chunks on demand, once each, in dependency order; thread-safe."""

    def __init__(self, rgb: vs.VideoNode, settings: UpscaleSettings, engine, worker: DeviceWorker,
                 model_id: str):
        self.rgb = rgb
        self.settings = settings
        self.engine = engine
        self.worker = worker
        self.core = vs.core
        self.params = engine.make_params(
            prompt=settings.full_prompt, negative_prompt=settings.negative_prompt,
            num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale,
            noise_level=settings.noise_level, propagation_steps=settings.propagation_steps,
            seed=settings.seed, w_lr=settings.w_lr, color_fix=settings.color_fix,
            tile_size=settings.tile_size, tile_overlap=settings.tile_overlap,
        )
        from .tiling import chunk_bounds

        n = rgb.num_frames
        self.bounds = chunk_bounds(n, settings.chunk_size) if n >= settings.chunk_size else [(0, n)]
        self.lock = threading.RLock()  # one chunk computation at a time per clip
        self.frames: OrderedDict[int, np.ndarray] = OrderedDict()
        self.states: dict[int, Any] = {}  # chunk index -> ChunkState leaving it
        numbers = {k: v for k, v in asdict(settings).items() if k not in ("cache_dir", "device", "seek")}
        self.param_key = hashlib.sha256(repr((sorted(numbers.items()), model_id, engine.dtype.__repr__()))
                                        .encode()).hexdigest()[:16]
        self.cache_dir = Path(settings.cache_dir).expanduser() if settings.cache_dir else None
        self.started = time.monotonic()

    def chunk_of(self, n: int) -> int:
        for k, (a, b) in enumerate(self.bounds):
            if a <= n < b:
                return k
        raise IndexError(n)

    def frame(self, n: int) -> tuple[np.ndarray, int]:
        """Frame n as (3, 4H, 4W) RGB in [0, 1], and the index of its chunk."""
        k = self.chunk_of(n)
        with self.lock:  # other threads wait here: a chunk is never computed twice
            if k not in self.frames:
                self._compute(k)
            self.frames.move_to_end(k)
            return self.frames[k][:, n - self.bounds[k][0]], k

    def _source(self, k: int):
        """Chunk k's frames as (1, 3, T, H, W) in [-1, 1], its scene cuts, and its cache folder."""
        import torch

        a, b = self.bounds[k]
        frames = [self.rgb.get_frame(i) for i in range(a, b)]
        cuts = [i for i, f in zip(range(a, b), frames) if f.props.get("_SceneChangePrev", 0)]
        video = torch.from_numpy(np.stack([_frame_to_array(f) for f in frames], axis=1)[None]) * 2 - 1
        folder = None
        if self.cache_dir is not None:
            digest = hashlib.sha256(video.numpy().tobytes()).hexdigest()[:16]
            folder = self.cache_dir / self.param_key / f"chunk{k:06d}-{digest}"
        return video, cuts, folder

    def _state_before(self, k: int):
        """The state leaving chunk k-1, from memory or the disk cache; None if not known."""
        if k == 0:
            return None
        if k - 1 in self.states:
            return self.states[k - 1]
        if self.cache_dir is not None:
            from .streaming import ChunkState

            _, _, folder = self._source(k - 1)
            if (folder / STATE_FILE).is_file():
                return ChunkState.load(folder / STATE_FILE)
        return None

    def _compute(self, k: int) -> None:
        """Compute chunk k, first the chunks it depends on unless seek='fast'."""
        first = k
        if self.settings.seek == "exact":
            while first > 0 and self._state_before(first) is None:
                first -= 1
        for j in range(first, k + 1):
            self._compute_one(j, decode=(j == k))

    def _compute_one(self, k: int, decode: bool) -> None:
        import torch
        from safetensors.torch import load_file, save_file

        from .streaming import ChunkState

        a, b = self.bounds[k]
        video, cuts, folder = self._source(k)
        # Scene cuts split the chunk into pieces: nothing (context, propagation, decode
        # group) is carried across a cut.
        starts = [i for i in cuts if i > a] if self.settings.scene_change else []
        pieces = list(zip([a, *starts], [*starts, b]))
        if folder is not None and (folder / LATENTS_FILE).is_file() and (folder / STATE_FILE).is_file():
            latents = load_file(str(folder / LATENTS_FILE))["latents"]
            state = ChunkState.load(folder / STATE_FILE)
            _log(self.core, f"chunk {k + 1}/{len(self.bounds)} (frames {a}-{b - 1}) read from {folder}")
        else:
            state = None if (self.settings.scene_change and a in cuts) else self._state_before(k)
            parts = []
            for s, e in pieces:  # on the device's one worker thread
                out, state = self.worker.run(self.engine.upscale_chunk, video[:, :, s - a:e - a], s, self.params,
                                             state if s == a else None, decode=False)
                parts.append(out.latents)
            latents = torch.cat(parts, dim=2)
            if folder is not None:  # latents first, state last: a state file means a finished chunk
                folder.mkdir(parents=True, exist_ok=True)
                save_file({"latents": latents.contiguous()}, str(folder / (LATENTS_FILE + ".tmp")))
                (folder / (LATENTS_FILE + ".tmp")).replace(folder / LATENTS_FILE)
                state.save(folder / STATE_FILE)
            elapsed = time.monotonic() - self.started
            _log(self.core, f"chunk {k + 1}/{len(self.bounds)} (frames {a}-{b - 1}) done, {elapsed:.0f} s elapsed")
        self.states[k] = state
        while len(self.states) > MEMORY_STATES:
            del self.states[min(self.states)]
        if decode:
            frames = torch.cat([self.worker.run(self.engine.decode, latents[:, :, s - a:e - a],
                                                video[:, :, s - a:e - a], self.params) for s, e in pieces], dim=2)
            self.frames[k] = ((frames[0] + 1) * 0.5).clamp(0, 1).numpy().astype(np.float32)
            while len(self.frames) > MEMORY_CHUNKS:
                self.frames.popitem(last=False)


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
    return clip


def _to_rgb(clip: vs.VideoNode) -> tuple[vs.VideoNode, dict[str, Any]]:
    """RGBS [0, 1], using the clip's colour props; unset ones default as VapourSynth users
    expect (709 for HD, 601 for SD; limited range for YUV, full for RGB)."""
    core = vs.core
    fmt = clip.format
    props = clip.get_frame(0).props
    hd = clip.width >= 1280 or clip.height >= 720
    matrix = props.get("_Matrix", vs.MATRIX_UNSPECIFIED)
    if matrix in (vs.MATRIX_UNSPECIFIED, vs.MATRIX_RGB) and fmt.color_family == vs.YUV:
        matrix = vs.MATRIX_BT709 if hd else vs.MATRIX_ST170_M
    # _Range in R7x+; _ColorRange (same values) from older sources. Transfer and primaries
    # need no conversion: the model works on the gamma-encoded RGB the matrix gives.
    rng = props.get(RANGE_PROP)
    if rng is None:
        with warnings.catch_warnings():  # reading the legacy name is what we want here
            warnings.simplefilter("ignore", DeprecationWarning)
            rng = props.get("_ColorRange")
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


def upscale(clip: vs.VideoNode, **kwargs: Any) -> vs.VideoNode:
    """Upscale-A-Video 4x super-resolution; see ``vs_uav.settings.UpscaleSettings`` for every
    parameter. Returns the input's format at 4x width and height, same frame count, rate and props."""
    clip = _check_clip(clip)
    try:
        settings = UpscaleSettings.from_kwargs(**kwargs)
    except ValueError as e:
        raise _fail(str(e)) from None
    model_dir = Path(settings.model).expanduser() if settings.model else default_model_dir()
    from .loading import ModelLoadError, check_folder

    try:
        check_folder(model_dir, settings.vae)
    except ModelLoadError as e:
        raise _fail(str(e)) from None
    device, dtype = resolve_device(settings.device, settings.dtype)
    engine, worker = get_engine(model_dir, settings.vae, device, dtype, settings.flow)
    if settings.noise_level > engine.model.max_noise_level:
        raise _fail(f"noise_level={settings.noise_level}; accepted: 0..{engine.model.max_noise_level} for this model")

    rgb, info = _to_rgb(clip)
    model_id = f"{model_dir.resolve()}:{settings.vae}"
    renderer = ChunkRenderer(rgb, settings, engine, worker, model_id)
    core = vs.core
    blank = core.std.BlankClip(rgb, width=clip.width * SCALE, height=clip.height * SCALE, keep=True)

    # VapourSynth reports an exception raised here with a Python traceback; the plugin's Guard
    # turns an _UAVError prop into a one-line frame error instead.
    guard = getattr(getattr(core, "uav", None), "Guard", None)

    def render(n: int, f: list[vs.VideoFrame]) -> vs.VideoFrame:
        try:
            data, k = renderer.frame(n)
        except Exception as e:  # reported for the frames it affects; vspipe stops cleanly
            logger.debug("%s: frame %d failed", NAME, n, exc_info=True)
            message = str(e).strip().splitlines()[-1] if isinstance(e, vs.Error) and str(e).strip() else \
                f"{type(e).__name__}: {e}"
            message = message if message.startswith(NAME) else f"{NAME}: frame {n} failed: {message}"
            if guard is None:
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

    out = core.std.ModifyFrame(blank, clips=[blank, clip], selector=render)
    out = _from_rgb(out, info)
    if guard is not None:
        out = guard(out)
    # Output props: the input's, except what the conversion rightly changed.
    return out
