"""Synthetic clips with known answers for the quality report: a smooth texture translated by a
known sub-pixel motion, rendered exactly at the source's size and at 4x, written losslessly
(FFV1, RGB) with the real ffmpeg, so that the report reads them as it reads any render."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import Sequence

import torch

LOW = (48, 64)  # (h, w) of the source
SCALE = 4
SHIFT = (0.75, -0.5)  # (x, y) source pixels per frame


def plane_waves(xs: torch.Tensor, ys: torch.Tensor, seed: int, waves: int, band: float) -> torch.Tensor:
    """(3, H, W) float64, unnormalised: ``waves`` random colour plane waves of frequencies 0.02 to
    0.02 + ``band`` cycles per pixel, evaluated at the coordinates ``xs``, ``ys`` (so that a
    sub-pixel move is exact)."""
    g = torch.Generator().manual_seed(seed)
    img = torch.zeros(3, *xs.shape, dtype=torch.float64)
    for _ in range(waves):
        d = torch.rand(2, generator=g, dtype=torch.float64) * 2 - 1
        f = d / d.norm() * (0.02 + band * torch.rand(1, generator=g, dtype=torch.float64))
        phase = 2 * math.pi * torch.rand(1, generator=g, dtype=torch.float64)
        colour = torch.rand(3, 1, 1, generator=g, dtype=torch.float64) * 2 - 1
        img += colour * torch.cos(2 * math.pi * (f[0] * xs + f[1] * ys) + phase)
    return img


def texture(h: int, w: int, offset: tuple[float, float], scale: int = 1, seed: int = 0) -> torch.Tensor:
    """(3, h, w) in [0.15, 0.85]: plane waves evaluated at the source-pixel coordinates of each
    pixel's centre (pixel X of a ``scale`` x frame is at (X + 0.5) / scale - 0.5), moved by
    ``offset`` source pixels."""
    ys = (torch.arange(h, dtype=torch.float64) + 0.5) / scale - 0.5 - offset[1]
    xs = (torch.arange(w, dtype=torch.float64) + 0.5) / scale - 0.5 - offset[0]
    ys, xs = torch.meshgrid(ys, xs, indexing="ij")
    img = plane_waves(xs, ys, seed, 24, 0.06)
    return (0.5 + 0.35 * img / img.abs().amax()).float()


def moving(frames: int, scale: int = 1, seed: int = 0, start: int = 0) -> torch.Tensor:
    """(T, 3, H, W): the texture moving by SHIFT per frame, at ``scale`` x the source's size."""
    h, w = LOW[0] * scale, LOW[1] * scale
    return torch.stack([texture(h, w, ((start + t) * SHIFT[0], (start + t) * SHIFT[1]), scale, seed)
                        for t in range(frames)])


def write_video(path: Path, frames: torch.Tensor, fps: int = 24) -> Path:
    """Frames (T, 3, H, W) in [0, 1] into a lossless RGB FFV1 Matroska file."""
    t, _, h, w = frames.shape
    data = (frames.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).contiguous().numpy().tobytes()
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
                    "-r", str(fps), "-i", "-", "-c:v", "ffv1", "-pix_fmt", "gbrp", str(path)],
                   input=data, check=True)
    return path


def with_pulses(frames: torch.Tensor, at: Sequence[int], amount: float) -> torch.Tensor:
    out = frames.clone()
    for t in at:
        out[t] = (out[t] + amount).clamp(0, 1)
    return out
