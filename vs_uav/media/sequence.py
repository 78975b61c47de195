"""Image sequences as sources (no torch, no VapourSynth): a film scanner's or a compositor's
frames, one file each, ``scan/reel1_0086400.dpx`` ...

A sequence is named by a printf-style pattern (``scan/reel1_%07d.dpx``) or by the folder that
holds it; its frames are numbered consecutively from the first file's number, which BestSource
(libavformat's image2 reader) is told (``start_number``). A sequence has no frame rate of its own:
the script assumes the one given (``--fps``, :data:`DEFAULT_FPS` by default).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Optional

# What libavformat's image2 reader decodes, by extension (EXR where ffmpeg was built with it).
IMAGE_SUFFIXES = (".dpx", ".tif", ".tiff", ".png", ".exr", ".jpg", ".jpeg", ".bmp", ".tga")
DEFAULT_FPS = Fraction(24)

_PATTERN = re.compile(r"%(0?)([0-9]*)d", re.ASCII)
MAX_DIGITS = 10  # a frame-number field's width: up to 10 digits (what a 32-bit number needs)


@dataclass(frozen=True)
class ImageSequence:
    pattern: Path  # absolute, e.g. /scan/reel1_%07d.dpx
    first: int  # the first file's number
    frames: int

    @property
    def last(self) -> int:
        return self.first + self.frames - 1


def is_pattern(path: os.PathLike | str) -> bool:
    """Whether ``path``'s file name is a printf-style pattern (one ``%d`` or ``%07d``)."""
    return len(_PATTERN.findall(Path(path).name)) == 1


def check_pattern(path: os.PathLike | str, option: str) -> None:
    """ValueError in one line unless ``path``'s name holds no ``%`` or exactly one frame-number
    field (``%d``, ``%07d``; width up to :data:`MAX_DIGITS`) and no other ``%``: what libavformat's
    image2 would read as a pattern (``%s``, ``%n``, ``%-5d``, ``%d%d``) never reaches it."""
    name = Path(path).name
    if "%" not in name:
        return
    fields = list(_PATTERN.finditer(name))
    rest = _PATTERN.sub("", name)
    width = int(fields[0].group(2) or 0) if len(fields) == 1 else 0
    if len(fields) != 1 or "%" in rest or width > MAX_DIGITS:
        raise ValueError(f"{option} {path}: the name's pattern {name!r}; accepted: exactly one frame-number field, "
                         f"%d or %0Nd with N up to {MAX_DIGITS} (e.g. %07d), and no other %")


def frame_name_pattern(name: str) -> "re.Pattern[str]":
    """A regular expression matching the file names a pattern such as ``reel_%07d.dpx`` names."""
    match = _PATTERN.search(name)
    assert match is not None, name
    digits = f"[0-9]{{{int(match.group(2))},}}" if match.group(2) else "[0-9]+"
    return re.compile(re.escape(name[:match.start()]) + digits + re.escape(name[match.end():]), re.ASCII)


def is_sequence(path: os.PathLike | str) -> bool:
    """Whether ``path`` names an image sequence: a pattern, or a folder of numbered images."""
    path = Path(path)
    return is_pattern(path) or (path.is_dir() and _numbered(path) != {})


def _numbered(folder: Path) -> dict[tuple[str, str, int], list[int]]:
    """The folder's numbered images by (prefix, suffix, digits): their numbers."""
    groups: dict[tuple[str, str, int], list[int]] = {}
    try:
        names = os.listdir(folder)
    except OSError:
        return {}
    for name in names:
        match = re.fullmatch(r"(.*?)([0-9]+)(\.[A-Za-z0-9]+)", name, re.ASCII)
        if match and match.group(3).lower() in IMAGE_SUFFIXES and not name.startswith("."):
            prefix, digits, suffix = match.groups()
            groups.setdefault((prefix, suffix, len(digits)), []).append(int(digits))
    return groups


def find_sequence(path: os.PathLike | str) -> ImageSequence:
    """The sequence ``path`` names (a pattern, or a folder holding one sequence of numbered
    images); ValueError in one line for none, several, or numbers with a gap (the reader would
    stop there)."""
    path = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    check_pattern(path, "input")
    if is_pattern(path):
        match = _PATTERN.search(path.name)
        assert match is not None
        prefix, rest, width = path.name[:match.start()], path.name[match.end():], match.group(2)
        numbers = [n for (p, s, digits), ns in _numbered(path.parent).items()
                   if p == prefix and s == rest and (not width or digits == int(width)) for n in ns]
        pattern = path
    else:
        groups = {k: v for k, v in _numbered(path).items() if k[1].lower() in IMAGE_SUFFIXES}
        if len(groups) > 1:
            named = ", ".join(f"{p}{'#' * d}{s}" for p, s, d in sorted(groups))
            raise ValueError(f"input {path}: holds several image sequences ({named}); accepted: one, or a pattern "
                             f"naming it, e.g. {path / '%07d.dpx'}")
        if not groups:
            return _none(path)
        (prefix, suffix, digits), numbers = next(iter(groups.items()))
        pattern = path / f"{prefix}%0{digits}d{suffix}"
    if not numbers:
        return _none(pattern)
    numbers = sorted(set(numbers))
    gap = next((a for a, b in zip(numbers, numbers[1:]) if b != a + 1), None)
    if gap is not None:
        raise ValueError(f"input {pattern}: frame {gap + 1} is missing (frames {numbers[0]}-{gap}, then "
                         f"{numbers[numbers.index(gap) + 1]}-...); accepted: consecutive frame numbers")
    return ImageSequence(pattern, numbers[0], len(numbers))


def _none(where: Path) -> ImageSequence:
    raise ValueError(f"input {where}: no image files found; accepted: numbered images "
                     f"({', '.join(IMAGE_SUFFIXES)}), e.g. reel1_0086400.dpx")


def signature(source: os.PathLike | str) -> list:
    """What tells a changed source from the one rendered before (resume records, the cluster's
    job key): a file's size and time; a sequence's first number, frames, and its files' total
    size and latest time."""
    path = Path(source)
    if not is_pattern(path):
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]
    seq = find_sequence(path)
    stats = [frame_path(seq, n).stat() for n in range(seq.first, seq.first + seq.frames)]
    return [seq.first, seq.frames, sum(s.st_size for s in stats), max(s.st_mtime_ns for s in stats)]


def frame_path(sequence: ImageSequence, number: int) -> Path:
    """The file of frame ``number`` (the pattern's printf formatting)."""
    pattern = sequence.pattern
    return pattern.with_name(_PATTERN.sub(lambda m: f"{number:{m.group(1)}{m.group(2)}d}", pattern.name, count=1))


def check_fps(fps: Optional[float]) -> Fraction:
    """``--fps`` as a fraction (24000/1001 for 23.976 and its kind); ValueError in one line."""
    if fps is None:
        return DEFAULT_FPS
    if not 0 < fps <= 1000:
        raise ValueError(f"--fps {fps:g}: accepted: a frame rate in (0, 1000], e.g. 24 or 23.976")
    for nominal in (24, 30, 48, 60, 120):  # NTSC-style rates given as decimals
        if abs(fps - nominal * 1000 / 1001) < 0.002:
            return Fraction(nominal * 1000, 1001)
    return Fraction(fps).limit_denominator(1001)


def reading_lines(sequence: ImageSequence) -> list[str]:
    """The script lines that read ``sequence`` as a clip (its rate: :func:`fps_line`)."""
    return ["# The image sequence, read by BestSource (libavformat's image2 reader).",
            f"clip = core.bs.VideoSource({str(sequence.pattern)!r}, start_number={sequence.first})\n"]


def fps_line(fps: Fraction) -> str:
    """The script line that gives a sequence its frame rate (``--fps``)."""
    return f"clip = core.std.AssumeFPS(clip, fpsnum={fps.numerator}, fpsden={fps.denominator})  # --fps"


__all__ = ["DEFAULT_FPS", "IMAGE_SUFFIXES", "ImageSequence", "check_fps", "find_sequence", "fps_line",
           "frame_path", "is_pattern", "is_sequence", "reading_lines", "signature"]
