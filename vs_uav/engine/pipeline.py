"""The Upscale-A-Video pipeline: text-guided latent diffusion 4x video super-resolution.

``UpscalePipeline.__call__`` follows the official inference step for step:
noise-level augmentation of the low-res video, classifier-free-guided DDIM over
8-frame U-Net windows, training-free latent propagation at chosen steps, float32
VAE decoding in groups of 3 frames, optional colour correction. Around it: clips
stream through chunks (:mod:`vs_uav.engine.driver`) and large frames through blended
spatial tiles (:mod:`vs_uav.core.tiling`), so memory stays bounded.
"""

from __future__ import annotations

import functools
import gc
import inspect
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from vs_uav.core.boundary import ChunkBoundary, chunk_boundary
from vs_uav.core.color import color_fix as apply_color_fix
from vs_uav.core.memory import (
    FREE_SHARE,
    GIB,
    MIN_TILE,
    MemoryPlan,
    held_pixel_bytes,
    plan_memory,
    smaller_plan,
    unet_pixel_bytes,
    vae_pixel_bytes,
)
from vs_uav.core.models.text_encoder import PromptEncoder
from vs_uav.core.models.unet_video import UNetVideoModel
from vs_uav.core.models.vae_video import AutoencoderKLVideo, decode_latents_vsr
from vs_uav.core.propagation import PropagationCarry, propagate
from vs_uav.core.scheduling import DDIMScheduler, LowResScheduler, SchedulerConfig
from vs_uav.core.step_cache import StepCache
from vs_uav.core.tiling import CONTEXT, WINDOW, decode_groups, ramp, scene_windows, spatial_tiles
from vs_uav.engine.driver import ChunkDriver, ProgressCallback
from vs_uav.engine.state import ChunkState, UpscaleOutput
from vs_uav.settings import SETTINGS_BY_NAME, UpscaleSettings
from vs_uav.weights.folder import check_folder, load_component, max_noise_level, read_config, torch_dtype

logger = logging.getLogger(__name__)

# Frames are padded to a multiple of this (the U-Net downsamples 3 times).
SIZE_MULTIPLE = 8
MIN_SIZE = 8

NOISE_STREAM_IMAGE = 0
NOISE_STREAM_LATENTS = 1


@dataclass
class UpscaleAVideoModel:
    """Every component of one loaded model folder, ready for the pipeline."""

    folder: Path
    unet: UNetVideoModel
    vae: AutoencoderKLVideo
    prompt_encoder: PromptEncoder
    scheduler: DDIMScheduler
    low_res_scheduler: LowResScheduler
    max_noise_level: int
    vae_kind: str


def frame_generator(seed: int, frame: int, stream: int) -> torch.Generator:
    """A generator for one frame's draw, so results never depend on chunking or order."""
    # Odd 64-bit multipliers (splitmix constants) spread (seed, frame, stream) apart.
    mixed = seed * 0x9E3779B97F4A7C15 + frame * 0xBF58476D1CE4E5B9 + stream * 0x94D049BB133111EB
    return torch.Generator("cpu").manual_seed(mixed & 0x7FFF_FFFF_FFFF_FFFF)


def seeded_noise(seed: int, stream: int, frames: range, shape: Sequence[int]) -> torch.Tensor:
    """(1, C, len(frames), H, W) standard normal noise, each frame from its own generator."""
    c, h, w = shape
    return torch.stack([torch.randn((1, c, h, w), generator=frame_generator(seed, f, stream)) for f in frames], 2)


def _to_host(x: torch.Tensor) -> torch.Tensor:
    """``x`` on the CPU. From CUDA into pinned (page-locked) memory: a DMA copy on this thread's
    current stream, waited for by this thread only, so other streams' kernels keep running."""
    if x.device.type != "cuda":
        return x.cpu()
    out = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)  # from torch's caching host allocator
    out.copy_(x, non_blocking=True)
    torch.cuda.current_stream(x.device).synchronize()
    return out


def _check_finite(name: str, x: torch.Tensor) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values; accepted: finite numbers")


def _pad_frames(x: torch.Tensor, pad_h: int, pad_w: int) -> torch.Tensor:
    """Reflect-pad the bottom/right of (B, C, T, H, W) frames."""
    if not (pad_h or pad_w):
        return x
    b, c, n, h, w = x.shape
    x = F.pad(x.reshape(b, c * n, h, w), (0, pad_w, 0, pad_h), mode="reflect")
    return x.reshape(b, c, n, h + pad_h, w + pad_w)


def _padded(video: torch.Tensor) -> tuple[int, int]:
    """The (height, width) of a clip's frames padded for the U-Net: the latents' size."""
    h, w = video.shape[-2:]
    return h + (-h) % SIZE_MULTIPLE, w + (-w) % SIZE_MULTIPLE


def _tail(frames: torch.Tensor, before: Optional[torch.Tensor], cut: int, count: int) -> torch.Tensor:
    """The ``count`` frames before index ``cut`` of (..., T, H, W) ``frames`` on the CPU, reaching
    into ``before`` (the frames preceding them, e.g. a state's) when ``cut < count``."""
    part = frames[:, :, max(0, cut - count):cut].cpu()
    if part.shape[2] < count and before is not None:
        part = torch.cat([before[:, :, before.shape[2] - (count - part.shape[2]):].cpu(), part], dim=2)
    return part


@dataclass
class _ChunkInputs:
    """One chunk's model inputs, padded to the latents' size and on the device."""

    clean: torch.Tensor  # (1, 3, T, h, w) float32: the low-res frames as given, unpadded
    embeds: torch.Tensor  # prompt embeddings: rows [negative, positive] with guidance
    class_labels: torch.Tensor  # the noise level, one per row
    image: torch.Tensor  # (1, 3, T, H, W): the low-res frames noised at the noise level
    latents: torch.Tensor  # (1, C, T, H, W): the initial latents
    flows: Optional[tuple[torch.Tensor, torch.Tensor]]  # the chunk's (forward, backward) flows
    carry_flows: Optional[tuple[torch.Tensor, torch.Tensor]]  # previous chunk's last frame -> this one's first


def _with_context(frames: torch.Tensor, held: Optional[torch.Tensor], boundary: ChunkBoundary,
                  device: torch.device) -> torch.Tensor:
    """(..., T, H, W) ``frames`` preceded by the last ``boundary.context`` frames of ``held`` (a state's)."""
    if not boundary.context:
        return frames
    return torch.cat([held[:, :, boundary.preceding:].to(device), frames], dim=2)


def _preceding(held: Optional[torch.Tensor], boundary: ChunkBoundary) -> Optional[torch.Tensor]:
    """The frames of ``held`` (a state's) before the context frames: what precedes the extended
    frames, for a chunk shorter than the context it hands on."""
    return None if held is None else held[:, :, :boundary.preceding]


def _next_state(boundary: ChunkBoundary, state: Optional[ChunkState], tails: list[torch.Tensor],
                image: torch.Tensor, clean: torch.Tensor, propagated: dict[int, torch.Tensor],
                final: torch.Tensor) -> ChunkState:
    """What the chunk from ``boundary.end`` needs: the last frames' latents entering each step and
    their noised frames (its windows' context), the clean last frame (its boundary flow), the
    propagated x0 (its forward sweep) and the last final latents (its first decode group)."""
    return ChunkState(
        end=boundary.end, latents=torch.stack(tails),
        image=_tail(image, _preceding(state.image if state is not None else None, boundary), boundary.cut,
                    boundary.keep),
        last_frame=clean[:, :, boundary.last].cpu(), propagated=propagated, anchor=boundary.anchor,
        final=_tail(final, state.final if state is not None else None, boundary.end - boundary.start,
                    boundary.keep_final),
    )


def _free_bytes(device: torch.device) -> int:
    """Memory this process could still use on ``device``: free GPU memory plus what torch's
    allocator holds unused; the available RAM on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return available_ram()


def available_ram() -> int:
    """The RAM a process can still take: Linux's MemAvailable (free pages plus the page cache
    and other memory the kernel gives back on demand). Free pages alone (sysconf's
    SC_AVPHYS_PAGES, the fallback elsewhere) can be a few hundred MiB on a machine of 24 GiB
    whose files fill the page cache, which would refuse a render that fits easily."""
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 16 << 30


def _resident_bytes(modules: Sequence[torch.nn.Module], device: torch.device) -> int:
    """Bytes of the modules' weights that live on ``device`` (offloaded blocks do not)."""
    return sum(t.numel() * t.element_size() for m in modules for t in (*m.parameters(), *m.buffers())
               if t.device.type == device.type)


def _is_out_of_memory(e: BaseException) -> bool:
    """A failed allocation: CUDA's OutOfMemoryError, the CPU allocator's RuntimeError, MemoryError."""
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(e, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(e))


def _retry_out_of_memory(method):
    """Run a chunk method (``video`` and ``settings`` among its arguments) again from its
    inputs with a smaller plan when the device runs out of memory, until the smallest tile."""
    signature = inspect.signature(method)

    @functools.wraps(method)
    def retrying(self: "UpscalePipeline", *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs).arguments
        video, settings = bound["video"], bound["settings"]
        while True:
            plan = self.memory_plan(*_padded(video), settings)
            try:
                return method(self, *args, **kwargs)
            except Exception as e:
                if not _is_out_of_memory(e):
                    raise
                error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            # Outside the handler: the traceback (and the tensors its frames hold) is gone.
            self._shrink_plan(*_padded(video), settings, plan, error)

    return retrying


class UpscalePipeline:
    """4x video super-resolution; see :meth:`__call__`."""

    def __init__(self, model: UpscaleAVideoModel, device: Union[str, torch.device] = "cpu",
                 dtype: torch.dtype = torch.float32, flow: str = "auto"):
        self.model = model
        self.device = torch.device(device)
        self.dtype = dtype
        self.flow = flow
        self._flow_estimator = None
        self._model_id: Optional[str] = None
        # Memory plans by frame size and settings: chosen once, so every chunk of a render
        # tiles alike; replaced by a smaller one when a chunk runs out of memory.
        self._plans: dict[tuple, MemoryPlan] = {}
        self._acceleration = ("default", False, False)  # (weights, offload, compile) applied to the U-Net

    def configure(self, settings: UpscaleSettings) -> None:
        """Apply ``settings.weights``, ``offload`` and ``compile`` to the loaded U-Net, in place
        (:mod:`vs_uav.core.acceleration`); a second call with the same values does nothing. fp8
        weights cannot be undone (the full-width ones are gone): ValueError naming ``weights``."""
        from vs_uav.core.acceleration import (
            compile_blocks,
            disable_group_offload,
            enable_fp8_weights,
            enable_group_offload,
            uncompile_blocks,
        )

        wanted = (settings.weights, settings.offload, settings.compile)
        weights, offload, compiled = self._acceleration
        if wanted == self._acceleration:
            return
        if weights == "fp8" and settings.weights != "fp8":
            raise ValueError(f"weights={settings.weights!r} on a pipeline whose U-Net already holds fp8 weights; "
                             "accepted: 'fp8', or load the model again (UpscalePipeline.from_pretrained)")
        unet = self.model.unet
        # Hooks and compiled blocks wrap the layers as they are: undone before the weights change.
        if compiled and (not settings.compile or settings.weights != weights):
            uncompile_blocks(unet)
            compiled = False
        if offload and (not settings.offload or settings.weights != weights):
            disable_group_offload(unet, self.device)
            offload = False
        if settings.weights == "fp8" and weights != "fp8":
            enable_fp8_weights(unet, self.dtype)
        if settings.offload and not offload:
            if self.device.type == "cuda":
                enable_group_offload(unet, self.device)
            else:
                logger.info("offload: no effect on the %s device (the weights already live in host memory)",
                            self.device.type)
        if settings.compile and not compiled:
            compile_blocks(unet)
        self._acceleration = wanted
        self._plans.clear()  # the weights resident on the device changed

    def limits(self) -> tuple[int, int]:
        """(max noise level, the last diffusion timestep the scheduler was trained on)."""
        scheduler = self.model.scheduler.config
        return self.model.max_noise_level, scheduler.num_train_timesteps - scheduler.steps_offset

    @property
    def model_id(self) -> str:
        """The model's identity for cache fingerprints: folder, VAE, flow method, and the size
        and modification time of every file in the folder (replaced weights invalidate caches)."""
        if self._model_id is None:
            folder = Path(self.model.folder).resolve()
            files = sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                           for p in folder.rglob("*") if p.is_file())
            self._model_id = repr((str(folder), self.model.vae_kind, self.flow, files))
        return self._model_id

    @classmethod
    def from_pretrained(
        cls,
        model_dir: Union[str, Path],
        vae: str = "3d",
        device: Union[str, torch.device] = "cpu",
        dtype: Optional[Union[str, torch.dtype]] = None,
        flow: str = "auto",
    ) -> "UpscalePipeline":
        """Load the official model folder strictly: configs from the folder, every weight key
        and shape checked, modules built without weights and filled from the files
        (:func:`vs_uav.weights.folder.load_component`).

        ``dtype`` (default float32) applies to the U-Net and the text encoder; the VAE always
        runs in float32, as in the official inference. Raises ModelLoadError (one line naming
        the file) for a missing or damaged folder, ValueError for a bad argument.
        """
        if isinstance(dtype, str) or dtype is None:
            dtype = torch_dtype(dtype) or torch.float32
        SETTINGS_BY_NAME["flow"].check(flow)  # the settings model's rule, as for core.uav.Upscale
        folder = check_folder(model_dir, vae)  # the one check, before anything heavy is read
        # Built on the meta device and filled from the files: no random initialisation first.
        unet = load_component(folder, "unet")
        vae_model = load_component(folder, f"vae_{vae}")
        prompt_encoder = load_component(folder, "text_encoder")
        scheduler = DDIMScheduler(read_config(folder, "scheduler", SchedulerConfig.from_dict))
        low_res = LowResScheduler(read_config(folder, "low_res_scheduler", SchedulerConfig.from_dict))

        unet.to(device=device, dtype=dtype).eval().requires_grad_(False)
        prompt_encoder.text_model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        vae_model.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
        logger.info("loaded %s (vae=%s) on %s as %s", folder, vae, device, dtype)
        model = UpscaleAVideoModel(folder, unet, vae_model, prompt_encoder, scheduler, low_res,
                                   max_noise_level(folder), vae)
        return cls(model, device, dtype, flow)

    # -- flows ---------------------------------------------------------------------------------

    @property
    def flow_estimator(self):
        """Pairwise optical flow at low resolution (RAFT when its weights are present, else DIS)."""
        if self._flow_estimator is None:
            from vs_uav.core.flow import flow_estimator
            from vs_uav.weights.folder import default_method, load_raft, raft_weights

            method = default_method(self.model.folder) if self.flow == "auto" else self.flow
            path = raft_weights(self.model.folder) if method == "raft" else None
            if method == "raft" and path is None:
                raise ValueError(f"flow='raft' needs {self.model.folder}/propagator/raft-things.pth; "
                                 "accepted: flow='dis', or run `uav download`")
            self._flow_estimator = flow_estimator(method, load_raft(path, self.device) if path else None)
        return self._flow_estimator

    def estimate_flows(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(forward, backward) flows, each (1, 2, T-1, H, W), of a (1, 3, T, H, W) clip."""
        from vs_uav.core.flow import estimate_flows

        estimator = self.flow_estimator
        forward, backward = estimate_flows(video.to(self.device), estimator.method, estimator)
        return forward.float().cpu(), backward.float().cpu()

    # -- input tensors (settings are checked by UpscaleSettings, once) ------------------------

    @staticmethod
    def check_video(video, name: str = "video") -> None:
        """A (1, 3, T, H, W) finite float clip, or ValueError saying what is accepted."""
        if not isinstance(video, torch.Tensor) or video.ndim != 5 or video.shape[0] != 1 or video.shape[1] != 3:
            shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
            raise ValueError(f"{name} has shape {shape}; accepted: (1, 3, T, H, W) float tensor in [-1, 1]")
        _, _, t, h, w = video.shape
        if t < 1:
            raise ValueError(f"{name} has T=0 frames; accepted: T >= 1")
        if h < MIN_SIZE or w < MIN_SIZE:
            raise ValueError(f"{name} frames are {w}x{h}; accepted: at least {MIN_SIZE}x{MIN_SIZE}")
        if not video.is_floating_point():
            raise ValueError(f"{name} has dtype {video.dtype}; accepted: a floating-point tensor in [-1, 1]")
        _check_finite(name, video)

    def _check_extra(self, video, flows, latents, image_noise) -> None:
        _, _, t, h, w = video.shape
        if flows is not None:
            if not isinstance(flows, (tuple, list)) or len(flows) != 2:
                raise ValueError("flows must be a pair (forward, backward); accepted: two (1, 2, T-1, H, W) tensors")
            for name, f in zip(("flows[0] (forward)", "flows[1] (backward)"), flows):
                expected = (1, 2, t - 1, h, w)
                if not isinstance(f, torch.Tensor) or tuple(f.shape) != expected:
                    got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
                    raise ValueError(f"{name} has shape {got}; accepted: {expected}")
                _check_finite(name, f)
        c_lat = self.model.unet.config.in_channels - 3
        for name, x, c in (("latents", latents, c_lat), ("image_noise", image_noise, 3)):
            if x is not None:
                if not isinstance(x, torch.Tensor) or tuple(x.shape) != (1, c, t, h, w):
                    got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                    raise ValueError(f"{name} has shape {got}; accepted: {(1, c, t, h, w)}")
                _check_finite(name, x)

    # -- model calls ---------------------------------------------------------------------------

    @staticmethod
    def _plan_key(height: int, width: int, settings: UpscaleSettings) -> tuple:
        return (height, width, settings.guidance, settings.tile_size, settings.tile_overlap, settings.max_memory,
                settings.chunk_size, settings.lookahead, settings.cache_interval)

    def memory_plan(self, height: int, width: int, settings: UpscaleSettings) -> MemoryPlan:
        """The tile and U-Net windows per call for latents of this padded size (:mod:`vs_uav.core.memory`):
        chosen on the first call for a size and settings, from ``settings.max_memory`` (0: the
        device's free memory) less the resident weights, and logged once. One window per call
        on the CPU, where stacking gains nothing and results stay bit-identical everywhere.
        ValueError naming max_memory when even the smallest tile does not fit."""
        key = self._plan_key(height, width, settings)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        m = self.model
        weights = _resident_bytes([m.unet, m.vae, m.prompt_encoder.text_model], self.device)
        if settings.max_memory:
            budget, setting = int(settings.max_memory * GIB), f"max_memory={settings.max_memory:g}"
        else:
            free = _free_bytes(self.device)
            budget = weights + int(free * FREE_SHARE.get(self.device.type, 0.5))
            setting = f"max_memory=0 ({free / GIB:.2f} GiB free)"
        cfg, batch = m.unet.config, 2 if settings.guidance else 1
        # The longest chunk: a short remainder merged into it, look-ahead and window context.
        frames = settings.chunk_size + WINDOW - 1 + settings.lookahead + CONTEXT
        windows = len(set(scene_windows(0, 0, frames)))
        step_cache = windows * batch * WINDOW * cfg.block_out_channels[1] * self.dtype.itemsize \
            if settings.cache_interval > 1 else 0
        plan = plan_memory(
            height, width, budget=budget, weights=weights,
            held=held_pixel_bytes(frames, cfg.in_channels - 3, batch, step_cache),
            unet=unet_pixel_bytes(cfg.block_out_channels[0], self.dtype.itemsize, batch),
            vae=vae_pixel_bytes(m.vae.config.block_out_channels[0]), tile_size=settings.tile_size,
            tile_overlap=settings.tile_overlap, max_windows=windows if self.device.type == "cuda" else 1,
            setting=setting)
        logger.info("%s", plan.describe(height, width))
        return self._plans.setdefault(key, plan)

    def _shrink_plan(self, height: int, width: int, settings: UpscaleSettings, failed: MemoryPlan,
                     error: str) -> None:
        """After running out of memory with plan ``failed``: free what can be freed and plan
        half the tile, one window per call; ValueError naming max_memory below the smallest tile."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        key = self._plan_key(height, width, settings)
        if self._plans.get(key) is not failed:  # another thread (the side decode) shrank it already
            return
        plan = smaller_plan(failed, height, width, settings.tile_overlap)
        if plan is None:
            raise ValueError(f"max_memory={settings.max_memory:g}: out of memory ({error}) even in the smallest "
                             f"tiles ({MIN_TILE}x{MIN_TILE}); accepted: a larger max_memory, or more free memory "
                             f"on {self.device}")
        logger.warning("out of memory (%s); retrying the chunk with %s", error, plan.describe(height, width))
        self._plans[key] = plan

    def tile_for(self, height: int, width: int, settings: UpscaleSettings) -> tuple[int, int]:
        """(tile, overlap) in latent pixels for frames of this padded size; tile 0 = no tiling."""
        plan = self.memory_plan(height, width, settings)
        return plan.tile, plan.overlap

    def _tiled(self, fn, inputs: Sequence[torch.Tensor], tile: int, overlap: int, scale: int) -> torch.Tensor:
        """Apply ``fn`` over overlapping spatial tiles of (B, C, T, H, W) inputs and blend the
        (B, C', T, scale*H, scale*W) results with smooth weights (one value per pixel)."""
        h, w = inputs[0].shape[-2:]
        if not tile:
            return fn(*inputs)
        out = weight = None
        for y0, y1 in spatial_tiles(h, tile, overlap):
            wy = torch.tensor(ramp(scale * (y1 - y0), scale * y0, scale * y1, scale * h, scale * overlap))
            for x0, x1 in spatial_tiles(w, tile, overlap):
                wx = torch.tensor(ramp(scale * (x1 - x0), scale * x0, scale * x1, scale * w, scale * overlap))
                part = fn(*(x[..., y0:y1, x0:x1] for x in inputs)).float()
                if out is None:
                    out = part.new_zeros((*part.shape[:3], scale * h, scale * w))
                    weight = part.new_zeros((scale * h, scale * w))
                wt = (wy[:, None] * wx[None, :]).to(part.device)
                out[..., scale * y0:scale * y1, scale * x0:scale * x1] += part * wt
                weight[scale * y0:scale * y1, scale * x0:scale * x1] += wt
        return out / weight

    def _model_output(self, latents: torch.Tensor, image: torch.Tensor, t: int, embeds: torch.Tensor,
                      class_labels: torch.Tensor, tile: tuple[int, int],
                      windows: Sequence[tuple[int, int]], cache: Optional[StepCache] = None,
                      at_once: int = 1) -> torch.Tensor:
        """Model output for every frame: the U-Net over 8-frame ``windows`` (indices into
        ``latents``), overlaps averaged in window order (``old * 0.5 + new * 0.5``) exactly as
        the official loop does. ``cache``: step caching, one deep feature per U-Net call.
        ``at_once``: windows stacked along the batch of one U-Net call (the merge order stays)."""
        unet = self.model.unet
        batch = embeds.shape[0]

        def call(x: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
            k = x.shape[0]  # windows stacked: rows [w0 negative, w0 positive, w1 negative, ...]
            ctx, labels = (embeds.repeat(k, 1, 1), class_labels.repeat(k)) if k > 1 else (embeds, class_labels)
            x, lr = ((v.to(self.dtype).repeat_interleave(batch, 0) if k > 1
                      else v.to(self.dtype).expand(batch, -1, -1, -1, -1)) for v in (x, lr))
            if cache is not None:  # the keyword only when caching, so wrapped U-Nets need not know it
                return unet(x, t, lr, ctx, labels, deep_cache=cache.slot()).float()
            return unet(x, t, lr, ctx, labels).float()

        def stack(x: torch.Tensor, group: list[tuple[int, int]]) -> torch.Tensor:
            return torch.cat([x[:, :, a:b] for a, b in group]) if len(group) > 1 else x[:, :, group[0][0]:group[0][1]]

        out = torch.empty((batch, *latents.shape[1:]), dtype=torch.float32, device=latents.device)
        seen = torch.zeros(latents.shape[2], dtype=torch.bool)
        preds: dict[tuple[int, int], torch.Tensor] = {}  # a repeated window gives the same prediction
        for i, window in enumerate(windows):
            s, e = window
            if window not in preds:  # this and the next distinct windows of its length, in one call
                group = list(dict.fromkeys(w for w in windows[i:] if w[1] - w[0] == e - s))[:at_once]
                stacked = self._tiled(call, (stack(latents, group), stack(image, group)), *tile, scale=1)
                preds = dict(zip(group, stacked.split(batch)))
            pred = preds[window]
            old = seen[s:e]
            block = out[:, :, s:e]
            block[:, :, ~old] = pred[:, :, ~old]
            block[:, :, old] = block[:, :, old] * 0.5 + pred[:, :, old] * 0.5
            seen[s:e] = True
        return out

    def _decode(self, latents: torch.Tensor, video: torch.Tensor, w_lr: float, tile: tuple[int, int]) -> torch.Tensor:
        """Float32 decode in groups of 3 frames, each conditioned on its clean low-res frames."""
        vae = self.model.vae
        groups = []
        for s, e in decode_groups(latents.shape[2]):
            groups.append(self._tiled(lambda z, lr: decode_latents_vsr(vae, z, lr, w_lr),
                                      (latents[:, :, s:e], video[:, :, s:e]), *tile, scale=4))
        return torch.cat(groups, dim=2)

    # -- one chunk -----------------------------------------------------------------------------

    @torch.no_grad()
    @_retry_out_of_memory
    def upscale_chunk(
        self,
        video: torch.Tensor,
        start: int,
        settings: UpscaleSettings,
        state: Optional[ChunkState] = None,
        flows: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        boundary_flows: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        latents: Optional[torch.Tensor] = None,
        image_noise: Optional[torch.Tensor] = None,
        callback: Optional[Callable[[int, int], None]] = None,
        decode: bool = True,
        end: Optional[int] = None,
    ) -> tuple[UpscaleOutput, ChunkState]:
        """Denoise and decode frames ``start .. start + T`` of a clip.

        ``state`` is the previous chunk's :class:`ChunkState` (None at a scene's first frame);
        the returned state continues from frame ``end`` (default: after the last frame). Frames
        from ``end`` on are look-ahead: denoised like the others, so that the windows and the
        backward propagation sweep of the frames before ``end`` see what follows them.
        U-Net windows are laid from the scene's first frame (the state's ``anchor``), where
        one long chunk lays them. ``decode=False`` skips the VAE (``frames`` is None): for
        callers that cache the latents and decode with :meth:`decode` later.
        ``flows`` are the given frames' own flows (estimated when propagation needs them);
        ``boundary_flows`` link the previous chunk's last frame to this chunk's first
        ((1, 2, H, W) each, estimated from the state when needed).
        Tiles and windows per call follow :meth:`memory_plan`; a chunk that runs out of memory
        runs again from its inputs with half the tile (a warning), down to the smallest tile.
        """
        # 1. Inputs: checked before any work (the state here; `end` and the state's context by
        #    the boundary arithmetic, pure and cheap, that step 2 applies), then padded and on
        #    the device: prompt embeddings, the noised low-res frames, initial latents, flows.
        self._check_state(video, start, settings, state)
        boundary = chunk_boundary(start, video.shape[2], end, anchor=state.anchor if state is not None else None,
                                  held=state.context if state is not None else 0)
        x = self._chunk_inputs(video, start, settings, state, flows, boundary_flows, latents, image_noise)

        # 2. Boundary context: windows reaching back before `start` see the previous chunk's last
        #    `boundary.context` frames, their noised frames joined here, their latents at each step.
        image = _with_context(x.image, state.image if state is not None else None, boundary, self.device)

        # 3. Denoising loop, over the extended frames.
        final, tails, propagated = self._denoise(x, image, boundary, settings, state, callback)

        # 4. The next chunk's state, then the decode (padding cropped, colours corrected).
        new_state = _next_state(boundary, state, tails, image, x.clean, propagated, final)
        frames = self.decode(final, x.clean, settings) if decode else None
        return UpscaleOutput(frames=frames, latents=final), new_state

    @staticmethod
    def _check_state(video: torch.Tensor, start: int, settings: UpscaleSettings, state: Optional[ChunkState]) -> None:
        """ValueError unless ``state`` (when given) ends at ``start`` with latents of this clip's
        padded size, one per step."""
        ph, pw = _padded(video)
        if state is not None and (state.end != start or tuple(state.image.shape[-2:]) != (ph, pw)
                                  or state.latents.shape[0] != settings.steps):
            raise ValueError(f"state ends at frame {state.end} with {tuple(state.image.shape[-2:])} latents; "
                             f"accepted: a state ending at frame {start} with {(ph, pw)} latents and "
                             f"{settings.steps} steps")

    def _chunk_inputs(self, video: torch.Tensor, start: int, settings: UpscaleSettings, state: Optional[ChunkState],
                      flows, boundary_flows, latents, image_noise) -> _ChunkInputs:
        """The chunk's model inputs, padded to the latents' size, on the device; the draws come
        from (seed, frame index) unless given."""
        m, device = self.model, self.device
        _, _, n, h, w = video.shape
        ph, pw = _padded(video)
        pad = (ph - h, pw - w)
        clean = video.float()
        frames = range(start, start + n)
        # Prompt embeddings: rows [negative, positive] with guidance.
        # Caption and suffix apart: a prompt too long for CLIP loses caption, not suffix.
        logger.debug("frames %d-%d: prompt %r", start, start + n - 1, settings.prompt)
        embeds = m.prompt_encoder.encode(settings.prompt, settings.negative_prompt, guidance=settings.guidance,
                                         suffix=settings.prompt_suffix, join=UpscaleSettings.join_prompt)
        embeds = embeds.to(device, self.dtype)
        # The low-res input noised at noise_level; the level is also the U-Net's class label.
        if image_noise is None:
            image_noise = seeded_noise(settings.seed, NOISE_STREAM_IMAGE, frames, (3, h, w))
        image_noise = _pad_frames(image_noise.float(), *pad).to(device)
        image = m.low_res_scheduler.add_noise(_pad_frames(clean, *pad).to(device), image_noise, settings.noise_level)
        class_labels = torch.full((embeds.shape[0],), settings.noise_level, dtype=torch.long, device=device)
        if latents is None:
            latents = seeded_noise(settings.seed, NOISE_STREAM_LATENTS, frames, (m.unet.config.in_channels - 3, h, w))
        latents = _pad_frames(latents.float(), *pad).to(device) * m.scheduler.init_noise_sigma
        flows, carry_flows = self._chunk_flows(clean, pad, settings, state, flows, boundary_flows)
        return _ChunkInputs(clean, embeds, class_labels, image, latents, flows, carry_flows)

    def _chunk_flows(self, clean: torch.Tensor, pad: tuple[int, int], settings: UpscaleSettings,
                     state: Optional[ChunkState], flows, boundary_flows) -> tuple[Optional[tuple], Optional[tuple]]:
        """(the chunk's flows, the boundary flows) for propagation, at low resolution, padded like
        the frames and on the device; estimated when not given. None without propagation; the
        boundary flows only when continuing a state that propagated."""
        if not settings.propagation_steps:
            return None, None
        if flows is None:
            flows = self.estimate_flows(clean)
        flows = tuple(_pad_frames(f.float(), *pad).to(self.device) for f in flows)
        if state is None or not state.propagated:
            return flows, None
        if boundary_flows is None:
            pair = torch.stack([state.last_frame, clean[:, :, 0]], dim=2)
            fw, bw = self.estimate_flows(pair)
            boundary_flows = (fw[:, :, 0], bw[:, :, 0])
        return flows, tuple(_pad_frames(f.float()[:, :, None], *pad)[:, :, 0].to(self.device) for f in boundary_flows)

    def _denoise(self, x: _ChunkInputs, image: torch.Tensor, boundary: ChunkBoundary, settings: UpscaleSettings,
                 state: Optional[ChunkState], callback: Optional[Callable[[int, int], None]]):
        """The DDIM loop over the extended frames (``image``: the noised frames with their context).
        Returns the final latents (1, C, T, h, w) on the CPU, the latents entering each step of
        the frames the next chunk takes as context, and the forward-propagated x0 of the chunk's
        last frame before ``end`` at each propagation step."""
        m = self.model
        timesteps = m.scheduler.set_timesteps(settings.steps).tolist()
        plan = self.memory_plan(*_padded(x.clean), settings)
        tile = (plan.tile, plan.overlap)
        # Step caching: deep features live for this chunk only (every chunk runs all its steps).
        cache = StepCache(settings.cache_interval) if settings.cache_interval > 1 else None
        latents, tails, propagated = x.latents, [], {}
        for i, t in enumerate(timesteps):
            if cache is not None:
                cache.start_step(i)
            held = state.latents[i] if state is not None else None
            ext = _with_context(latents, held, boundary, self.device)
            tails.append(_tail(ext, _preceding(held, boundary), boundary.cut, boundary.keep))
            noise_pred = self._model_output(ext, image, t, x.embeds, x.class_labels, tile, boundary.windows,
                                            cache, plan.windows)[:, :, boundary.context:]
            if settings.guidance:
                uncond, text = noise_pred.chunk(2)
                noise_pred = uncond + settings.guidance_scale * (text - uncond)
            x0 = m.scheduler.step_v0(noise_pred, t, latents)
            if i in settings.propagation_steps:
                carry = None
                if x.carry_flows is not None and i in state.propagated:
                    carry = PropagationCarry(state.propagated[i].to(self.device), *x.carry_flows)
                x0 = propagate(x0, x.flows[0], x.flows[1], carry=carry)
                propagated[i] = x0[:, :, boundary.last].cpu()
            latents = m.scheduler.step_vt(x0, noise_pred, t, latents)
            if callback is not None:
                callback(i + 1, len(timesteps))
        h, w = x.clean.shape[-2:]
        return latents[..., :h, :w].cpu(), tails, propagated

    @torch.no_grad()
    @_retry_out_of_memory
    def decode(self, latents: torch.Tensor, video: torch.Tensor, settings: UpscaleSettings) -> torch.Tensor:
        """Frames (1, 3, T, 4H, 4W) in [-1, 1] from final latents (1, C, T, H, W) and the clean
        low-res ``video``: the VAE step alone, so a cache can keep latents (12x smaller)."""
        _, _, _, h, w = video.shape
        ph, pw = _padded(video)
        video_p = _pad_frames(video.float(), ph - h, pw - w).to(self.device)
        latents_p = _pad_frames(latents.float(), ph - h, pw - w).to(self.device)
        tile = self.tile_for(ph, pw, settings)
        decoded = self._decode(latents_p, video_p, settings.w_lr, tile)[..., : 4 * h, : 4 * w]
        if settings.color_fix != "none":
            flat = decoded[0].transpose(0, 1)
            lr = video[0].float().transpose(0, 1).to(flat.device)
            decoded = apply_color_fix(flat, lr, settings.color_fix).clamp(-1, 1).transpose(0, 1)[None]
        return _to_host(decoded)

    # -- a whole clip --------------------------------------------------------------------------

    def __call__(
        self,
        video: torch.Tensor,
        settings: Optional[UpscaleSettings] = None,
        *,
        flows: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        latents: Optional[torch.Tensor] = None,
        image_noise: Optional[torch.Tensor] = None,
        scene_cuts: Sequence[int] = (),
        callback: Optional[ProgressCallback] = None,
        **changes,
    ) -> UpscaleOutput:
        """Upscale ``video`` (1, 3, T, H, W) in [-1, 1] by 4.

        ``settings`` (default: :class:`UpscaleSettings`'s defaults) with keyword ``changes``
        applied, e.g. ``pipe(video, prompt="a koala", steps=20)``: the names and checks are
        those of ``core.uav.Upscale``. ``flows=(forward, backward)``, each (1, 2, T-1, H, W) at
        low resolution, replace the estimated flows for ``propagation_steps``; ``latents``
        and ``image_noise`` replace the random draws, which otherwise come from the seed and
        the frame index. ``scene_cuts``: frames that start a new scene.
        """
        # 1. Settings: validated once, by the settings model.
        settings = settings or UpscaleSettings()
        if changes:
            settings = settings.replace(**changes)
        # 2. Input tensors.
        self.check_video(video)
        self._check_extra(video, flows, latents, image_noise)

        # 3. Injected draws and flows, cut to each piece the chunk driver asks for.
        def inputs(s: int, e: int) -> dict:
            extra = {}
            if flows is not None:
                extra["flows"] = (flows[0][:, :, s:e - 1], flows[1][:, :, s:e - 1])
                if s > 0:
                    extra["boundary_flows"] = (flows[0][:, :, s - 1], flows[1][:, :, s - 1])
            if latents is not None:
                extra["latents"] = latents[:, :, s:e]
            if image_noise is not None:
                extra["image_noise"] = image_noise[:, :, s:e]
            return extra

        # 4. Chunk by chunk, then joined.
        outputs = [out for _, out in self.stream(lambda a, b: video[:, :, a:b], video.shape[2], settings,
                                                 scene_cuts=scene_cuts, callback=callback, inputs=inputs)]
        return UpscaleOutput(torch.cat([o.frames for o in outputs], 2), torch.cat([o.latents for o in outputs], 2))

    def stream(
        self,
        source: Callable[[int, int], torch.Tensor],
        num_frames: int,
        settings: UpscaleSettings,
        *,
        scene_cuts: Sequence[int] = (),
        callback: Optional[ProgressCallback] = None,
        inputs: Optional[Callable[[int, int], dict]] = None,
    ) -> Iterator[tuple[int, UpscaleOutput]]:
        """Upscale a clip chunk by chunk, yielding ``(first frame, output)`` per chunk.

        ``source(a, b)`` returns frames a..b-1 as (1, 3, b-a, H, W) in [-1, 1]; only one
        chunk (and the small boundary state) is held at a time, so memory does not grow
        with the clip's length. The chunks are :class:`~vs_uav.engine.driver.ChunkDriver`'s.
        """
        cuts = sorted(set(scene_cuts))

        def chunk_source(a: int, b: int) -> tuple[torch.Tensor, list[int]]:
            return source(a, b), [c for c in cuts if a <= c < b]

        yield from ChunkDriver(self, settings, num_frames, chunk_source, inputs=inputs, progress=callback)
