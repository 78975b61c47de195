"""Memory planning (no torch): the spatial tile and the U-Net windows per call that fit a budget.

The pipeline measures what it has (resident weights, free memory, or ``max_memory``) and
asks :func:`plan_memory` for a :class:`MemoryPlan` before a chunk starts; when a chunk
runs out of memory anyway, :func:`smaller_plan` is what it retries with. Sizes are in
latent pixels, which are the low-res input's pixels (the model upscales 4x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

from vs_uav.core.tiling import DECODE_GROUP, WINDOW

GIB = 1 << 30
# The smallest tile the settings accept (tile_size >= 32), and the tiles' granularity
# (the U-Net downsamples 3 times).
MIN_TILE = 32
TILE_STEP = 8
# Activation tensors alive at the peak of one call, in units of one top-level tensor.
# Measured (peak RSS over two frame sizes, tiny reference model): the U-Net keeps ~23 of
# (batch, C0, 8 frames) alive, the float32 decode ~7 (3d VAE) to ~12 (video VAE) of
# (C0, 3 frames) at 4x the latent size.
UNET_LIVE_TENSORS = 24
VAE_LIVE_TENSORS = 12
# Share of the free memory a plan takes when max_memory is 0: the estimates are rough, and
# the allocator fragments.
FREE_SHARE = {"cuda": 0.7, "cpu": 0.5}


def unet_pixel_bytes(channels: int, itemsize: int, batch: int) -> int:
    """Activation bytes per latent pixel of one U-Net window (``batch`` 2 with guidance);
    ``channels``: the U-Net's top-level width, ``itemsize``: its dtype's."""
    return batch * WINDOW * channels * itemsize * UNET_LIVE_TENSORS


def vae_pixel_bytes(channels: int) -> int:
    """Activation bytes per latent pixel of one float32 decode group (4x4 output pixels each);
    ``channels``: the decoder's top-level width."""
    return DECODE_GROUP * 16 * channels * 4 * VAE_LIVE_TENSORS


def held_pixel_bytes(frames: int, latent_channels: int, batch: int, step_cache: int = 0) -> int:
    """Bytes per latent pixel of the whole frame that a chunk of ``frames`` frames keeps on the
    device between calls: latents, noised input, model outputs, decoded frames (float32),
    plus ``step_cache`` bytes per pixel of stored deep features."""
    per_frame = 4 * (latent_channels * (2 + 2 * batch) + 3 * 2 + 3 * 16 * 2)
    return frames * per_frame + step_cache


@dataclass(frozen=True)
class MemoryPlan:
    """How a chunk runs: ``tile`` latent pixels square (0: whole frames) overlapping by
    ``overlap``, ``windows`` U-Net windows stacked per call, within ``budget`` bytes of which
    the resident weights take ``weights``."""

    budget: int
    weights: int
    tile: int
    overlap: int
    windows: int

    def describe(self, height: int, width: int) -> str:
        tiles = f"{self.tile}x{self.tile} tiles (overlap {self.overlap})" if self.tile else "whole frames"
        return (f"memory budget {self.budget / GIB:.2f} GiB (weights {self.weights / GIB:.2f} GiB): "
                f"{width}x{height} latents as {tiles}, {self.windows} U-Net window(s) per call")


def _gib_up(n: int) -> float:
    return math.ceil(n / GIB * 100) / 100


def plan_memory(height: int, width: int, *, budget: int, weights: int, held: int, unet: int, vae: int,
                tile_size: int = 0, tile_overlap: int = 16, max_windows: int = 1,
                setting: str = "max_memory") -> MemoryPlan:
    """The plan for ``height`` x ``width`` latents: the largest tile whose U-Net and decode
    activations (``unet``, ``vae`` bytes per pixel) fit next to the ``weights`` and what the
    chunk holds (``held`` bytes per pixel of the frame), then as many windows per call (at
    most ``max_windows``) as fit that tile. ``tile_size`` > 0 fixes the tile.

    ValueError naming ``setting`` (e.g. "max_memory=2") when even the smallest tile does not fit.
    """
    area = height * width
    fixed = weights + held * area
    per_px = max(unet, vae)
    least = fixed + per_px * min(MIN_TILE, height) * min(MIN_TILE, width)
    if budget < least:
        raise ValueError(f"{setting} is too small for {width}x{height} latents (weights {weights / GIB:.2f} GiB, "
                         f"chunk {held * area / GIB:.2f} GiB, smallest tile {(least - fixed) / GIB:.2f} GiB); "
                         f"accepted: max_memory >= {_gib_up(least)} (GiB) on a device with that much")
    room = budget - fixed
    if tile_size:
        tile = tile_size
    elif per_px * area <= room:
        tile = 0
    else:
        tile = max(MIN_TILE, math.isqrt(room // per_px) // TILE_STEP * TILE_STEP)
    if height <= tile and width <= tile:
        tile = 0
    tile_area = min(tile, height) * min(tile, width) if tile else area
    windows = max(1, min(max_windows, room // (unet * tile_area)))
    return MemoryPlan(budget, weights, tile, min(tile_overlap, tile // 2) if tile else 0, windows)


def smaller_plan(plan: MemoryPlan, height: int, width: int, tile_overlap: int) -> Optional[MemoryPlan]:
    """What to retry with after running out of memory: half the tile (of the frame when
    untiled), one window per call; None when that is below the smallest tile."""
    tile = (plan.tile or max(height, width)) // 2 // TILE_STEP * TILE_STEP
    if tile < MIN_TILE:
        return None
    return replace(plan, tile=tile, overlap=min(tile_overlap, tile // 2), windows=1)
