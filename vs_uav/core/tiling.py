"""Pure window and tile arithmetic (no torch): which frames and pixels each model call sees."""

from __future__ import annotations

# The U-Net was trained on 8-frame clips; the official inference slides it with stride 6.
WINDOW = 8
WINDOW_STRIDE = 6
# The official decode runs the VAE on groups of 3 frames.
DECODE_GROUP = 3


def temporal_windows(num_frames: int, size: int = WINDOW, stride: int = WINDOW_STRIDE) -> list[tuple[int, int]]:
    """The official U-Net windows over ``num_frames`` frames, in call order.

    One window of all frames when they fit; otherwise a window starts every ``stride``
    frames and one running past the end is shifted back to end at the last frame. The
    list may repeat a window (e.g. 14 frames: [6, 14) twice): the official running
    average counts it twice, so callers must too.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames={num_frames} must be >= 1")
    if num_frames <= size:
        return [(0, num_frames)]
    windows = []
    for start in range(0, num_frames, stride):
        end = min(num_frames, start + size)
        windows.append((end - size, end))
    return windows


def scene_windows(anchor: int, first: int, stop: int, size: int = WINDOW,
                  stride: int = WINDOW_STRIDE) -> list[tuple[int, int]]:
    """The U-Net windows that cover frames ``first .. stop`` of a scene starting at frame
    ``anchor``, in absolute frame numbers and call order.

    They are the official windows of the frames ``anchor .. stop`` (:func:`temporal_windows`),
    less those that end before ``first``: a chunk continuing a scene lays its windows exactly
    where one long chunk would, taking the frames before ``first`` as context. When ``stop``
    is not the scene's end, the last window is shifted back to end there, as at a scene's end.
    """
    return [(anchor + s, anchor + e) for s, e in temporal_windows(stop - anchor, size, stride) if anchor + e > first]


def on_window_grid(start: int, anchor: int, stride: int = WINDOW_STRIDE) -> int:
    """The last frame at or before ``start`` where the U-Net windows of a scene starting at
    ``anchor`` begin (``anchor`` + a multiple of the stride): a cold start there lays its
    windows (and decode groups) where the whole scene's render lays them."""
    if not 0 <= anchor <= start:
        raise ValueError(f"anchor={anchor}, start={start}; accepted: 0 <= anchor <= start")
    return start - (start - anchor) % stride


def decode_groups(num_frames: int, size: int = DECODE_GROUP) -> list[tuple[int, int]]:
    """Consecutive frame groups of ``size`` for the VAE decode (the last may be shorter)."""
    if num_frames <= size:
        return [(0, num_frames)]
    return [(s, min(num_frames, s + size)) for s in range(0, num_frames, size)]


# Frames before a chunk a boundary-straddling window can reach back to (it starts at most
# this many frames before the chunk's first frame).
CONTEXT = WINDOW - 1


def chunk_bounds(num_frames: int, chunk_size: int) -> list[tuple[int, int]]:
    """Consecutive chunks of ``chunk_size`` frames; a remainder shorter than one U-Net
    window is merged into the chunk before it so that every chunk fills a window.
    ``chunk_size`` >= WINDOW (the settings model checks it)."""
    bounds = [(s, min(num_frames, s + chunk_size)) for s in range(0, num_frames, chunk_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < WINDOW:
        last = bounds.pop()
        bounds[-1] = (bounds[-1][0], last[1])
    return bounds


def spatial_tiles(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Start/end of overlapping tiles covering ``size`` pixels along one axis.

    Tiles are ``tile`` long (multiples of 8 keep the U-Net's downsampling exact), spread
    evenly so that neighbours overlap by at least ``overlap``; one tile when it fits.
    """
    if tile <= 0 or overlap < 0 or overlap >= tile:
        raise ValueError(f"tile_size={tile}, tile_overlap={overlap}; accepted: tile_size > tile_overlap >= 0")
    if size <= tile:
        return [(0, size)]
    n = -(-(size - overlap) // (tile - overlap))  # ceil
    last = size - tile
    starts = [round(i * last / (n - 1)) // 8 * 8 for i in range(n)]
    starts[-1] = last
    return [(s, s + tile) for s in starts]


def ramp(length: int, start: int, end: int, size: int, overlap: int) -> list[float]:
    """Blend weights of one tile along one axis: a smooth (raised-cosine) rise over the
    overlap on sides that touch another tile, 1 elsewhere, never exactly 0."""
    import math

    weights = []
    for i in range(length):
        w = 1.0
        if start > 0 and overlap > 0 and i < overlap:
            w = min(w, 0.5 - 0.5 * math.cos(math.pi * (i + 0.5) / overlap))
        if end < size and overlap > 0 and i >= length - overlap:
            j = length - 1 - i
            w = min(w, 0.5 - 0.5 * math.cos(math.pi * (j + 0.5) / overlap))
        weights.append(w)
    return weights
