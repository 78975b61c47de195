"""Measures of a render's quality, on frames as tensors: fidelity, temporal stability, colour.

Frames are (N, 3, H, W) float RGB in [0, 1] (gamma-encoded, as the model sees them).

* Fidelity: PSNR and SSIM per frame (SSIM as Wang et al. 2004 define it and as
  torchmetrics computes it by default: an 11-tap Gaussian window of sigma 1.5, K1 0.01,
  K2 0.03, the frame reflect-padded so that every pixel has a window, averaged over the
  pixels and the three channels).
* Temporal stability: the flow warping error of Lai et al. 2018 ("Learning blind video
  temporal consistency"), which Upscale-A-Video's paper reports as E*warp (x 10^-3): the
  mean squared difference between frame t and frame t+1 warped back onto t along the flow
  t -> t+1, over the pixels a forward-backward consistency test (Ruder et al. 2016) finds
  visible in both frames and whose target lies inside the frame.
* Flicker: how far a frame's mean luma, and its local contrast, stray from the mean of its
  neighbours in the scene (a pulse shows at its own frame, a steady drift does not).
* Colour: the mean and the spread of each channel.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from vs_uav.core.propagation import consistency_mask

LUMA = (0.2126, 0.7152, 0.0722)  # BT.709 weights on gamma-encoded RGB
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
# The occlusion test of Ruder et al. (|w + w^|^2 < 0.01 (|w|^2 + |w^|^2) + 0.5), which Lai et
# al.'s E_warp masks with; the propagation uses the official, stricter latent-scale thresholds.
OCCLUSION_ALPHA1, OCCLUSION_ALPHA2 = 0.01, 0.5
EWARP_SCALE = 1000.0  # E*warp is E_warp x 10^3, as the papers print it
CONTRAST_BLOCK = 8  # pixels: the side of the blocks whose luma spread is the local contrast


def _check(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dim() != 4 or a.shape[1] != 3 or a.shape != b.shape:
        raise ValueError(f"frames must be two (N, 3, H, W) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """(N,) PSNR in dB of each frame pair (inf where they are equal)."""
    _check(a, b)
    mse = (a.double() - b.double()).square().flatten(1).mean(1)
    return (10 * torch.log10(data_range ** 2 / mse)).float()


def _gaussian(window: int, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    x = torch.arange(window, dtype=dtype) - (window - 1) / 2
    g = torch.exp(-(x / sigma).square() / 2)
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """(N,) SSIM of each frame pair, the mean over the pixels and the channels."""
    _check(a, b)
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"frames of {a.shape[-1]}x{a.shape[-2]}: SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW}")
    x, y = a.float(), b.float()  # float32, as torchmetrics: float64 convolutions are ten times slower on a CPU
    g = _gaussian(SSIM_WINDOW, SSIM_SIGMA, torch.float32).to(x.device)
    n, c = x.shape[:2]
    pad = SSIM_WINDOW // 2
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    y = F.pad(y, (pad, pad, pad, pad), mode="reflect")
    # The five local moments in one separable, grouped convolution (a channel per group is
    # several times faster on a CPU than a batch of one-channel images).
    maps = torch.cat((x, y, x * x, y * y, x * y), 1)
    groups = maps.shape[1]
    maps = F.conv2d(maps, g.view(1, 1, 1, -1).expand(groups, 1, 1, SSIM_WINDOW).contiguous(), groups=groups)
    maps = F.conv2d(maps, g.view(1, 1, -1, 1).expand(groups, 1, SSIM_WINDOW, 1).contiguous(), groups=groups)
    mx, my, xx, yy, xy = maps.split(c, 1)
    sxx, syy = (xx - mx * mx).clamp_min(0), (yy - my * my).clamp_min(0)
    sxy = xy - mx * my
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    index = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return index.reshape(n, -1).mean(1).float()


def downscale(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic downscale to ``size`` (h, w) with antialiasing (a cubic kernel widened by the
    factor, as PIL's and MATLAB's imresize), clamped to [0, 1]."""
    return F.interpolate(frames.float(), size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def upscale(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A plain bicubic resize to ``size`` (h, w), clamped to [0, 1]: the baseline an upscaler beats.
    OpenCV's cubic resize on a CPU (the same kernel, a = -0.75, and pixel-centre alignment as
    torch's bicubic interpolate, to 1e-6, three times faster), torch's elsewhere."""
    frames = frames.float()
    if frames.device.type != "cpu":
        return F.interpolate(frames, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
    import cv2
    import numpy as np

    hwc = frames.permute(0, 2, 3, 1).contiguous().numpy()
    out = np.stack([cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_CUBIC) for f in hwc])
    return torch.from_numpy(out).permute(0, 3, 1, 2).clamp_(0, 1)


def scale_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 2, h, w) flow in pixels -> (N, 2, H, W) on a grid ``size`` (bilinear, pixel centres
    aligned), each component scaled by its axis' ratio."""
    h, w = flow.shape[-2:]
    if (h, w) == tuple(size):
        return flow
    out = F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
    return out * torch.tensor((size[1] / w, size[0] / h), dtype=out.dtype, device=out.device).view(1, 2, 1, 1)


def visible(flow_fw: torch.Tensor, flow_bw: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) 1 where frame t's pixel is seen in frame t+1 too: the forward-backward test
    of Ruder et al. passes and ``p + flow_fw(p)`` lies inside the frame."""
    mask = consistency_mask(flow_fw, flow_bw, OCCLUSION_ALPHA1, OCCLUSION_ALPHA2)
    h, w = flow_fw.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, device=flow_fw.device, dtype=flow_fw.dtype),
                            torch.arange(w, device=flow_fw.device, dtype=flow_fw.dtype), indexing="ij")
    tx, ty = xs + flow_fw[:, 0], ys + flow_fw[:, 1]
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    return mask * inside[:, None].to(mask.dtype)


def warp_grid(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The sampling grid of ``flow`` (N, 2, h, w) scaled to ``size``: (N, H, W, 2) in grid_sample's
    [-1, 1] coordinates (align_corners=True), made once and used for every video warped along it."""
    flow = scale_flow(flow.float(), size)
    h, w = size
    xs = torch.arange(w, dtype=flow.dtype, device=flow.device).view(1, 1, w)
    ys = torch.arange(h, dtype=flow.dtype, device=flow.device).view(1, h, 1)
    gx = (xs + flow[:, 0]) * (2.0 / max(w - 1, 1)) - 1.0
    gy = (ys + flow[:, 1]) * (2.0 / max(h - 1, 1)) - 1.0
    return torch.stack((gx, gy), dim=3)


def warping_error(current: torch.Tensor, following: torch.Tensor, flow: torch.Tensor,
                  mask: torch.Tensor) -> torch.Tensor:
    """(N,) E_warp of each pair: the mean over the visible pixels (and the channels) of
    (frame t - frame t+1 warped onto t along ``flow``, t -> t+1)^2; NaN where nothing is visible.
    ``flow`` may be at a smaller size (it is scaled), or a ready :func:`warp_grid`."""
    _check(current, following)
    size = current.shape[-2:]
    grid = flow if flow.dim() == 4 and flow.shape[-1] == 2 and flow.shape[1:3] == size else warp_grid(flow, size)
    if mask.shape[-2:] != size:
        mask = F.interpolate(mask.float(), size=size, mode="nearest")
    warped = F.grid_sample(following.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    error = (current.float() - warped).square_().sum(1, keepdim=True).mul_(mask)
    seen = mask.flatten(1).sum(1) * current.shape[1]
    return torch.where(seen > 0, error.flatten(1).sum(1) / seen.clamp_min(1), torch.full_like(seen, math.nan))


def luma(frames: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) BT.709 luma of gamma-encoded RGB."""
    r, g, b = LUMA
    return (frames[:, 0:1] * r).add_(frames[:, 1:2], alpha=g).add_(frames[:, 2:3], alpha=b)


def local_contrast(frames: torch.Tensor, block: int = CONTRAST_BLOCK, y: Optional[torch.Tensor] = None
                   ) -> torch.Tensor:
    """(N,) the mean over ``block`` x ``block`` tiles of the luma's standard deviation in the tile
    (``y``: the frames' :func:`luma`, when it is at hand)."""
    y = luma(frames.float()) if y is None else y
    k = max(1, min(block, *y.shape[-2:]))
    mean = F.avg_pool2d(y, k)
    var = (F.avg_pool2d(y * y, k) - mean * mean).clamp_min(0)
    return var.sqrt().flatten(1).mean(1)


def channel_stats(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """((N, 3) mean, (N, 3) standard deviation) of each channel."""
    var, mean = torch.var_mean(frames.float().flatten(2), dim=2, correction=0)
    return mean, var.sqrt()


def jitter(values: Sequence[float], starts: Sequence[int]) -> list[float]:
    """For each frame, |its value - the mean of its neighbours' values| within its scene
    (``starts``: the scenes' first frames, 0 first); 0 for a scene of one frame."""
    n = len(values)
    bounds = sorted({0, *[s for s in starts if 0 < s < n]}) + [n]
    out = [0.0] * n
    for first, end in zip(bounds, bounds[1:]):
        for t in range(first, end):
            near = [values[i] for i in (t - 1, t + 1) if first <= i < end]
            out[t] = abs(values[t] - sum(near) / len(near)) if near else 0.0
    return out
