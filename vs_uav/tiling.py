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


def decode_groups(num_frames: int, size: int = DECODE_GROUP) -> list[tuple[int, int]]:
    """Consecutive frame groups of ``size`` for the VAE decode (the last may be shorter)."""
    if num_frames <= size:
        return [(0, num_frames)]
    return [(s, min(num_frames, s + size)) for s in range(0, num_frames, size)]
