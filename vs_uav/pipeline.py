"""The Upscale-A-Video pipeline: text-guided latent diffusion 4x video super-resolution.

``UpscalePipeline.__call__`` follows the official inference step for step:
noise-level augmentation of the low-res video, classifier-free-guided DDIM over
8-frame U-Net windows, training-free latent propagation at chosen steps, float32
VAE decoding in groups of 3 frames, optional colour correction.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .color import COLOR_FIX_CHOICES, color_fix as apply_color_fix
from .loading import VAE_CHOICES, UpscaleAVideoModel, load_model, torch_dtype
from .models.text_encoder import NEGATIVE_PROMPT
from .models.vae_video import decode_latents_vsr
from .propagation import propagate
from .tiling import decode_groups, temporal_windows

logger = logging.getLogger(__name__)

# Frames are padded to a multiple of this (the U-Net downsamples 3 times).
SIZE_MULTIPLE = 8
MIN_SIZE = 8

ProgressCallback = Callable[[int, int], None]


@dataclass
class UpscaleOutput:
    frames: torch.Tensor  # (1, 3, T, 4H, 4W) in [-1, 1], float32 on the CPU
    latents: torch.Tensor  # (1, 4, T, H, W) final latents, float32 on the CPU


def frame_generator(seed: int, frame: int, stream: int) -> torch.Generator:
    """A generator for one frame's draw: results never depend on chunking or order."""
    # A fixed odd multiplier spreads (seed, frame, stream) over the 64-bit seed space.
    mixed = (seed * 0x9E3779B97F4A7C15 + frame * 0xBF58476D1CE4E5B9 + stream * 0x94D049BB133111EB)
    return torch.Generator("cpu").manual_seed(mixed & 0x7FFF_FFFF_FFFF_FFFF)


def seeded_noise(seed: int, stream: int, frames: range, shape: Sequence[int]) -> torch.Tensor:
    """(1, C, len(frames), H, W) standard normal noise, each frame from its own generator."""
    c, h, w = shape
    return torch.stack(
        [torch.randn((1, c, h, w), generator=frame_generator(seed, f, stream)) for f in frames], dim=2
    )


NOISE_STREAM_IMAGE = 0
NOISE_STREAM_LATENTS = 1


def _check_finite(name: str, x: torch.Tensor) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values; accepted: finite numbers")


class UpscalePipeline:
    """4x video super-resolution; see :meth:`__call__`."""

    def __init__(self, model: UpscaleAVideoModel, device: Union[str, torch.device] = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.model = model
        self.device = torch.device(device)
        self.dtype = dtype

    @classmethod
    def from_pretrained(
        cls,
        model_dir: Union[str, Path],
        vae: str = "3d",
        device: Union[str, torch.device] = "cpu",
        dtype: Optional[Union[str, torch.dtype]] = None,
    ) -> "UpscalePipeline":
        if isinstance(dtype, str) or dtype is None:
            dtype = torch_dtype(dtype) or torch.float32
        model = load_model(model_dir, vae=vae, device=device, dtype=dtype)
        return cls(model, device, dtype)

    # -- validation -------------------------------------------------------------------------

    def _validate(self, video, num_inference_steps, guidance_scale, noise_level, propagation_steps,
                  flows, latents, image_noise, color_fix) -> None:
        if not isinstance(video, torch.Tensor) or video.ndim != 5 or video.shape[0] != 1 or video.shape[1] != 3:
            shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
            raise ValueError(f"video has shape {shape}; accepted: (1, 3, T, H, W) float tensor in [-1, 1]")
        _, _, t, h, w = video.shape
        if t < 1:
            raise ValueError("video has T=0 frames; accepted: T >= 1")
        if h < MIN_SIZE or w < MIN_SIZE:
            raise ValueError(f"video frames are {w}x{h}; accepted: at least {MIN_SIZE}x{MIN_SIZE}")
        if not video.is_floating_point():
            raise ValueError(f"video has dtype {video.dtype}; accepted: a floating-point tensor in [-1, 1]")
        _check_finite("video", video)
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps={num_inference_steps!r}; accepted: an integer >= 1")
        n_train = self.model.scheduler.config.num_train_timesteps
        if num_inference_steps > n_train:
            raise ValueError(f"num_inference_steps={num_inference_steps}; accepted: 1..{n_train}")
        if not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"guidance_scale={guidance_scale!r}; accepted: a finite number >= 0")
        max_level = self.model.max_noise_level
        if not isinstance(noise_level, int) or not 0 <= noise_level <= max_level:
            raise ValueError(f"noise_level={noise_level!r}; accepted: an integer in [0, {max_level}]")
        for s in propagation_steps:
            if not isinstance(s, int) or not 0 <= s < num_inference_steps:
                raise ValueError(
                    f"propagation_steps contains {s!r}; accepted: step indices in [0, {num_inference_steps - 1}]"
                )
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
        if color_fix not in COLOR_FIX_CHOICES:
            raise ValueError(f"color_fix={color_fix!r}; accepted: {', '.join(COLOR_FIX_CHOICES)}")

    # -- the steps ---------------------------------------------------------------------------

    def _unet_windows(self, latents: torch.Tensor, image: torch.Tensor, t: int, embeds: torch.Tensor,
                      class_labels: torch.Tensor) -> torch.Tensor:
        """Model output for every frame: the U-Net over 8-frame windows, overlaps averaged
        in window order (``old * 0.5 + new * 0.5``) exactly as the official loop does."""
        unet = self.model.unet
        num_frames = latents.shape[2]
        batch = embeds.shape[0]
        out = torch.empty((batch, latents.shape[1], *latents.shape[2:]), dtype=torch.float32, device=latents.device)
        seen = torch.zeros(num_frames, dtype=torch.bool)
        prev_window, pred = None, None
        for window in temporal_windows(num_frames):
            s, e = window
            if window != prev_window:  # a repeated window gives the same prediction
                x = latents[:, :, s:e].to(self.dtype).expand(batch, -1, -1, -1, -1)
                lr = image[:, :, s:e].to(self.dtype).expand(batch, -1, -1, -1, -1)
                pred = unet(x, t, lr, embeds, class_labels).float()
                prev_window = window
            old = seen[s:e]
            block = out[:, :, s:e]
            block[:, :, ~old] = pred[:, :, ~old]
            block[:, :, old] = block[:, :, old] * 0.5 + pred[:, :, old] * 0.5
            seen[s:e] = True
        return out

    @torch.no_grad()
    def __call__(
        self,
        video: torch.Tensor,
        prompt: str = "",
        negative_prompt: str = NEGATIVE_PROMPT,
        num_inference_steps: int = 30,
        guidance_scale: float = 6.0,
        noise_level: int = 120,
        propagation_steps: Sequence[int] = (),
        flows: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        latents: Optional[torch.Tensor] = None,
        image_noise: Optional[torch.Tensor] = None,
        seed: int = 0,
        w_lr: float = 1.0,
        color_fix: str = "none",
        callback: Optional[ProgressCallback] = None,
    ) -> UpscaleOutput:
        """Upscale ``video`` (1, 3, T, H, W) in [-1, 1] by 4.

        ``flows=(forward, backward)``, each (1, 2, T-1, H, W) at low resolution, are used
        for propagation at ``propagation_steps`` (step indices, not timesteps); without
        flows no propagation happens. ``latents`` and ``image_noise`` replace the random
        draws, which otherwise come from ``seed`` and the frame index.
        """
        propagation_steps = list(propagation_steps)
        self._validate(video, num_inference_steps, guidance_scale, noise_level, propagation_steps,
                       flows, latents, image_noise, color_fix)
        m = self.model
        device = self.device
        _, _, num_frames, h, w = video.shape

        # 1. Pad frames to a multiple of 8 (reflect), cropped back after decoding.
        pad_h, pad_w = (-h) % SIZE_MULTIPLE, (-w) % SIZE_MULTIPLE
        video = video.float().to(device)

        def pad(x: torch.Tensor) -> torch.Tensor:
            if not (pad_h or pad_w):
                return x
            b, c, n = x.shape[:3]
            x = F.pad(x.reshape(b, c * n, *x.shape[3:]), (0, pad_w, 0, pad_h), mode="reflect")
            return x.reshape(b, c, n, *x.shape[2:])

        video = pad(video)
        ph, pw = h + pad_h, w + pad_w

        # 2. Encode the prompt: rows [negative, positive] with guidance.
        guidance = guidance_scale > 1.0
        embeds = m.prompt_encoder.encode(prompt, negative_prompt, guidance=guidance).to(device, self.dtype)
        batch = embeds.shape[0]

        # 3. Noise the low-res input at noise_level; the level is also the U-Net's class label.
        if image_noise is None:
            image_noise = seeded_noise(seed, NOISE_STREAM_IMAGE, range(num_frames), (3, h, w))
        image = m.low_res_scheduler.add_noise(video, pad(image_noise.float().to(device)), noise_level)
        class_labels = torch.full((batch,), noise_level, dtype=torch.long, device=device)

        # 4. Timesteps and initial latents.
        timesteps = m.scheduler.set_timesteps(num_inference_steps).tolist()
        c_lat = m.unet.config.in_channels - 3
        if latents is None:
            latents = seeded_noise(seed, NOISE_STREAM_LATENTS, range(num_frames), (c_lat, h, w))
        latents = pad(latents.float().to(device)) * m.scheduler.init_noise_sigma
        if flows is not None:
            flows = (pad(flows[0].float().to(device)), pad(flows[1].float().to(device)))

        # 5. Denoising loop.
        for i, t in enumerate(timesteps):
            noise_pred = self._unet_windows(latents, image, t, embeds, class_labels)
            if guidance:
                uncond, text = noise_pred.chunk(2)
                noise_pred = uncond + guidance_scale * (text - uncond)
            x0 = m.scheduler.step_v0(noise_pred, t, latents)
            if flows is not None and i in propagation_steps:
                x0 = propagate(x0, flows[0], flows[1])
            latents = m.scheduler.step_vt(x0, noise_pred, t, latents)
            if callback is not None:
                callback(i + 1, num_inference_steps)

        # 6. Decode in float32, groups of 3 frames, each conditioned on its clean low-res frames.
        frames = torch.cat(
            [decode_latents_vsr(m.vae, latents[:, :, s:e], video[:, :, s:e], w_lr) for s, e in decode_groups(num_frames)],
            dim=2,
        )
        frames = frames[..., : 4 * h, : 4 * w]
        latents = latents[..., :h, :w]

        # 7. Colour correction against the bicubically upsampled input.
        if color_fix != "none":
            flat = frames[0].transpose(0, 1)  # (T, 3, 4H, 4W)
            lr = video[0, :, :, :h, :w].transpose(0, 1)
            frames = apply_color_fix(flat, lr, color_fix).clamp(-1, 1).transpose(0, 1)[None]
        return UpscaleOutput(frames=frames.cpu(), latents=latents.cpu())
