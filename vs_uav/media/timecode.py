"""SMPTE timecodes (no torch, no VapourSynth): ``HH:MM:SS:FF`` as a frame count and back.

A source's start timecode (its ``timecode`` tag) numbers its first frame; a restored piece of
it (a conform's, ``--frames``) carries the timecode of its own first frame, so that an editing
program can relink by timecode. Drop-frame timecodes (``;`` before the frames, at 30000/1001
and 60000/1001 fps) skip frame numbers 0 and 1 (0-3 at 59.94) every minute except every tenth.
"""

from __future__ import annotations

import re
from fractions import Fraction

_TIMECODE = re.compile(r"^([0-9]{1,2}):([0-9]{2}):([0-9]{2})([:;.,])([0-9]{1,3})$", re.ASCII)
# What a container's timecode tag must be to be carried into an output: HH:MM:SS:FF (or ;FF).
_TAG = re.compile(r"[0-9]{2}:[0-9]{2}:[0-9]{2}[:;][0-9]{2,3}", re.ASCII)


def _nominal(fps: Fraction) -> int:
    return max(1, round(fps))


def _dropped(fps: Fraction) -> int:
    """Frame numbers a drop-frame timecode skips each minute (2 at 29.97, 4 at 59.94)."""
    return _nominal(fps) // 15


def timecode_frames(timecode: str, fps: Fraction) -> int:
    """The frame count ``timecode`` stands for at ``fps``; ValueError for text that is none."""
    match = _TIMECODE.match(timecode.strip())
    if not match or not fps:
        raise ValueError(f"timecode {timecode!r}; accepted: HH:MM:SS:FF (HH:MM:SS;FF drop frame) at a known rate")
    hh, mm, ss, sep, ff = match.groups()
    hours, minutes, seconds, frames = int(hh), int(mm), int(ss), int(ff)
    nominal = _nominal(fps)
    if minutes > 59 or seconds > 59 or frames >= nominal:
        raise ValueError(f"timecode {timecode!r}: minutes and seconds below 60, frames below {nominal}")
    total = (hours * 3600 + minutes * 60 + seconds) * nominal + frames
    if sep in ";,":
        every = 60 * hours + minutes
        total -= _dropped(fps) * (every - every // 10)
    return total


def frames_timecode(frames: int, fps: Fraction, drop: bool = False) -> str:
    """The timecode of frame ``frames`` (from 00:00:00:00) at ``fps``; ``drop``: drop-frame
    numbering (where the rate has it), written with ``;``. Wraps at 24 hours."""
    nominal = _nominal(fps)
    drop = drop and _dropped(fps) > 0 and Fraction(fps).denominator == 1001
    if drop:
        d = _dropped(fps)
        per_ten = nominal * 600 - 9 * d  # frames in ten minutes
        tens, rest = divmod(frames, per_ten)
        frames += 9 * d * tens + (d * ((rest - d) // (nominal * 60 - d)) if rest >= d else 0)
    frames %= nominal * 86400
    seconds, ff = divmod(frames, nominal)
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}{';' if drop else ':'}{ff:02d}"


def valid_tag(timecode: str, fps: Fraction) -> bool:
    """Whether a container's timecode tag is a timecode at ``fps``: ``HH:MM:SS:FF`` (``;`` drop
    frame), hours below 24, minutes and seconds below 60, frames below the rate."""
    if not _TAG.fullmatch(timecode) or not fps or int(timecode[:2]) > 23:
        return False
    try:
        timecode_frames(timecode, fps)
    except ValueError:
        return False
    return True


def is_drop_frame(timecode: str) -> bool:
    match = _TIMECODE.match(timecode.strip())
    return bool(match) and match.group(4) in ";,"


def shift_timecode(timecode: str, frames: int, fps: Fraction) -> str:
    """``timecode`` advanced by ``frames`` at ``fps``, written as it was (drop frame or not)."""
    return frames_timecode(timecode_frames(timecode, fps) + frames, fps, is_drop_frame(timecode))


__all__ = ["frames_timecode", "is_drop_frame", "shift_timecode", "timecode_frames", "valid_tag"]
