"""A labelled set for the scene-cut detector, spliced from the shared real videos (frame-exact,
by VapourSynth) and encoded with ffmpeg.

Each shot is an excerpt of one shared video; where a shot starts after another it is a cut
(labelled), except where it continues the same shot. Animation is included the way limited
animation looks: the drawings of ``old_animation_1`` held for several frames each, then
replaced by a later one (the character jumps, the background stays): those frames are drawing
changes, labelled as non-cuts. Two cuts are between shots of similar colour: a close-up of the
cartoon after the cartoon itself, and the old film after the same film mirrored.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from clips import AIGC, ANIMATION, MOVIE

FPS = 25


@dataclass(frozen=True)
class Shot:
    """Frames of ``video`` in order (a repeated number holds that drawing), seen through an
    optional ``view`` (:data:`CLOSE_UP`, :data:`MIRROR`); ``cut``: it starts a new shot."""

    video: Path
    frames: tuple[int, ...]
    view: str = ""
    cut: bool = True

    def changes(self) -> list[int]:
        """Offsets where a held drawing is replaced by a later one (not the shot's first frame)."""
        f = self.frames
        return [i for i in range(1, len(f))
                if f[i] != f[i - 1] and (f[i] - f[i - 1] > 1 or i > 1 and f[i - 1] == f[i - 2])]


def run(a: int, n: int) -> tuple[int, ...]:
    """n frames from a, as shot."""
    return tuple(range(a, a + n))


def held(first: int, step: int, hold: int, count: int) -> tuple[int, ...]:
    """Limited animation: ``count`` drawings ``step`` source frames apart, each held ``hold`` frames."""
    return tuple(first + step * k for k in range(count) for _ in range(hold))


CLOSE_UP = "close-up"  # the upper middle quarter, scaled up: the character's head, the same colours
MIRROR = "mirror"

# Labelled cuts at the start of every shot but the first and the continued ones; the drawing
# changes of the held shots are labelled non-cuts.
SHOTS: tuple[Shot, ...] = (
    Shot(ANIMATION, run(0, 20)),
    Shot(ANIMATION, held(20, 6, 4, 5), cut=False),  # the same shot, now on fours with jumps
    Shot(AIGC, run(5, 16)),
    Shot(ANIMATION, held(4, 9, 3, 6)),
    Shot(ANIMATION, run(30, 16), view=CLOSE_UP),  # cut to a close-up of the same cartoon
    Shot(MOVIE, run(2, 12)),
    Shot(MOVIE, run(14, 12), view=MIRROR),  # the same film, mirrored: similar colour and light
    Shot(ANIMATION, held(10, 12, 5, 5)),  # big jumps: 12 source frames between drawings
    Shot(AIGC, run(25, 12)),
    Shot(ANIMATION, held(40, 4, 2, 8) + run(56, 14), cut=True),  # on twos, then full motion
)


@dataclass(frozen=True)
class Labels:
    frames: int
    cuts: list[int]  # first frames of new shots
    changes: list[int]  # drawing changes inside a shot: not cuts


def starts(shots: Sequence[Shot] = SHOTS) -> list[int]:
    """The first frame of each shot in the set."""
    out, at = [], 0
    for shot in shots:
        out.append(at)
        at += len(shot.frames)
    return out


def labels(shots: Sequence[Shot] = SHOTS) -> Labels:
    cuts, changes = [], []
    for k, (at, shot) in enumerate(zip(starts(shots), shots)):
        if k and shot.cut:
            cuts.append(at)
        elif k:
            changes.append(at)  # a continued shot's first frame is a drawing change too
        changes += [at + i for i in shot.changes()]
    return Labels(sum(len(s.frames) for s in shots), cuts, changes)


def clip(shots: Sequence[Shot] = SHOTS, size: tuple[int, int] = (96, 72)):
    """The set as a VapourSynth clip (YUV 4:2:0, 8 bits, ``size``) spliced frame by frame."""
    import vapoursynth as vs

    core = vs.core
    parts = []
    for shot in shots:
        src = core.bs.VideoSource(str(shot.video))
        if shot.view == CLOSE_UP:  # the upper middle quarter
            src = core.std.Crop(src, src.width // 4, src.width // 4, 0, src.height // 2)
        elif shot.view == MIRROR:
            src = core.std.FlipHorizontal(src)
        src = core.resize.Bicubic(src, *size, format=vs.YUV420P8, range_s="limited")
        parts.append(core.std.Splice([src[n] for n in shot.frames]))
    return core.std.AssumeFPS(core.std.Splice(parts), fpsnum=FPS, fpsden=1)


def build(out: Path, size: tuple[int, int] = (96, 72), shots: Sequence[Shot] = SHOTS) -> Labels:
    """The set encoded as H.264 (as a user's file would be), and its labels."""
    spliced = clip(shots, size)
    encoder = subprocess.Popen(["ffmpeg", "-v", "error", "-y", "-f", "yuv4mpegpipe", "-i", "-", "-c:v", "libx264",
                                "-crf", "16", "-pix_fmt", "yuv420p", str(out)], stdin=subprocess.PIPE)
    assert encoder.stdin is not None
    with encoder.stdin:
        spliced.output(encoder.stdin, y4m=True)
    if encoder.wait() != 0:
        raise RuntimeError(f"ffmpeg could not encode {out}")
    return labels(shots)
