"""Colour correction of the upscaled frames against the low-res input.

Diffusion drifts colours slightly; both methods pull the output's low frequencies
(AdaIN: per-channel mean and std; wavelet: everything below a 5-level a-trous blur)
back to those of the bicubically upsampled input, keeping the generated detail.
Frames are (N, C, H, W).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

ColorFix = Literal["none", "adain", "wavelet"]
COLOR_FIX_CHOICES: tuple[str, ...] = ("none", "adain", "wavelet")


def _mean_std(x: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.reshape(*x.shape[:2], -1)
    # Unbiased variance plus eps, as in the reference implementation.
    std = (flat.var(dim=2) + eps).sqrt()[..., None, None]
    return flat.mean(dim=2)[..., None, None], std


def adain(content: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Give ``content`` the per-frame, per-channel mean and std of ``reference``."""
    c_mean, c_std = _mean_std(content)
    r_mean, r_std = _mean_std(reference)
    return (content - c_mean) / c_std * r_std + r_mean


_BLUR = ((0.0625, 0.125, 0.0625), (0.125, 0.25, 0.125), (0.0625, 0.125, 0.0625))


def _wavelet_blur(x: torch.Tensor, radius: int) -> torch.Tensor:
    c = x.shape[1]
    kernel = torch.tensor(_BLUR, dtype=x.dtype, device=x.device).expand(c, 1, 3, 3)
    x = F.pad(x, (radius,) * 4, mode="replicate")
    return F.conv2d(x, kernel, groups=c, dilation=radius)


def _wavelet_split(x: torch.Tensor, levels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low): the sum of the band-pass layers and the residual low-pass."""
    high = torch.zeros_like(x)
    for i in range(levels):
        low = _wavelet_blur(x, 2**i)
        high += x - low
        x = low
    return high, x


def wavelet(content: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``content``'s high frequencies on ``reference``'s low frequencies."""
    high, _ = _wavelet_split(content)
    _, low = _wavelet_split(reference)
    return high + low


def color_fix(frames: torch.Tensor, low_res: torch.Tensor, mode: str) -> torch.Tensor:
    """Correct (N, C, 4H, 4W) ``frames`` against their (N, C, H, W) ``low_res`` source."""
    if mode not in COLOR_FIX_CHOICES:
        raise ValueError(f"color_fix={mode!r} is not supported; accepted: {', '.join(COLOR_FIX_CHOICES)}")
    if mode == "none":
        return frames
    reference = F.interpolate(low_res, size=frames.shape[-2:], mode="bicubic")
    return adain(frames, reference) if mode == "adain" else wavelet(frames, reference)
