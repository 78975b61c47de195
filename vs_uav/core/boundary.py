"""Chunk-boundary arithmetic (no torch): what a chunk's U-Net windows see of the chunk before
it, which of its frames are look-ahead, and what it hands on to the next chunk.

A chunk covers frames ``start .. stop`` (absolute numbers). Its windows are laid from the
scene's first frame (``anchor``) as one long chunk would lay them
(:func:`~vs_uav.core.tiling.scene_windows`); those reaching back before ``start`` take the
previous chunk's last frames, held in its state, as fixed context. The chunk's denoising
runs over the *extended* frames: that context, then the chunk's own frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from vs_uav.core.tiling import CONTEXT, DECODE_GROUP, scene_windows


@dataclass(frozen=True)
class ChunkBoundary:
    """Where one chunk meets the previous one and the next one (see :func:`chunk_boundary`)."""

    start: int  # the chunk's first frame
    stop: int  # one past its last frame
    end: int  # the frame the next chunk continues from; frames ``end .. stop`` are look-ahead
    anchor: int  # the scene's first frame, where windows and decode groups are laid from
    context: int  # frames before ``start`` the windows see: the last ones the previous state holds
    preceding: int  # the state's frames before those ``context`` frames (0 without a state)
    windows: tuple[tuple[int, int], ...]  # U-Net windows, as indices into the extended frames
    keep: int  # frames before ``end`` whose latents and image the next chunk may need as context
    keep_final: int  # frames before ``end`` whose final latents the next chunk's decode groups need

    @property
    def cut(self) -> int:
        """Index of frame ``end`` in the extended frames."""
        return self.context + self.end - self.start

    @property
    def last(self) -> int:
        """Index in the chunk of the last frame before ``end`` (the one the state describes)."""
        return self.end - self.start - 1

    @property
    def lookahead(self) -> int:
        """Frames after ``end``: denoised so that the frames before ``end`` see what follows."""
        return self.stop - self.end


def chunk_boundary(start: int, frames: int, end: Optional[int] = None, anchor: Optional[int] = None,
                   held: int = 0) -> ChunkBoundary:
    """The boundary of a chunk of ``frames`` frames from frame ``start``.

    ``end``: the frame the next chunk continues from (default: after the last frame).
    ``anchor``: the scene's first frame, from the previous chunk's state (None: the chunk
    starts a scene, at ``start``). ``held``: the context frames that state holds (0 without
    one). ValueError for an ``end`` outside the chunk or a state holding too few frames.
    """
    stop = start + frames
    end = stop if end is None else end
    if not start < end <= stop:
        raise ValueError(f"end={end}; accepted: a frame in [{start + 1}, {stop}]")
    anchor = start if anchor is None else anchor
    windows = scene_windows(anchor, start, stop)
    context = start - min(s for s, _ in windows)
    if context > held:
        raise ValueError(f"state holds {held} context frames; accepted: {context} or more")
    return ChunkBoundary(
        start=start, stop=stop, end=end, anchor=anchor, context=context, preceding=held - context,
        windows=tuple((s - start + context, e - start + context) for s, e in windows),
        keep=min(CONTEXT, end - anchor), keep_final=min(DECODE_GROUP - 1, end - anchor),
    )
