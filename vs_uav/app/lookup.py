"""Media found as an editing system relinks it: by path, clip name, reel and timecode.

An edit names its media in several ways, none of them reliably a path on this machine: an
OpenTimelineIO reference's URL (absolute, relative to the edit, ``file://``, or a Windows
``S:\\...`` / UNC ``\\\\server\\...`` or macOS path from the editor's machine), a CMX 3600 list's
``* FROM CLIP NAME:`` (with or without the file's extension), its reel/tape column, or a
``* FROM CLIP:`` / ``* FROM FILE:`` / ``* SOURCE FILE:`` comment. :func:`find_media` tries, for
each clip in this order:

1. the reference's path as it is (absolute, beside the edit, ``file://``);
2. the names the clip gives (:func:`clip_names`: the reference's file name, the file names of
   its comments, the clip name with and without extension, the reel), each looked up in the
   ``--media-map`` (a CSV of name or reel to path) and then among the files beside the edit and
   under every ``--search`` folder and its subfolders (:class:`MediaIndex`), by file name and
   by file name without extension, case-blind;
3. where several files match one name, the one whose own timecode range holds the clip's
   source range (``media_range``: the source's start timecode and length); two that are equally
   good are refused in one line listing them.

The answer says how the media was found, for the plan to show.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Callable, Optional, Sequence
from urllib.parse import unquote, urlparse

from vs_uav.errors import UavError
from vs_uav.untrusted import escaped

# A path written on Windows: a drive letter, or a UNC share.
_WINDOWS = re.compile(r"^([A-Za-z]:[\\/]|\\\\)")
# CMX 3600 comments that name a file (the adapter keeps those it does not read as comments).
_FILE_COMMENTS = re.compile(r"^\*?\s*(FROM CLIP|FROM FILE|SOURCE FILE|CLIP FILE)\s*:\s*(?P<path>.+?)\s*$", re.I)
# Reels that are no media: black, bars, an auxiliary source.
_NO_REEL = {"", "AX", "BL", "BLACK", "BARS"}
# How deep a --search folder is walked (a volume's root would otherwise be walked whole).
MAX_SEARCH_DEPTH = 12


class MediaLookupError(UavError, ValueError):
    """Media that cannot be told apart, or a media map that cannot be read; one line."""


@dataclass(frozen=True)
class Found:
    path: Path
    how: str  # e.g. "path", "clip name 'A001C003'", "reel 'A001', timecode"


def reference_path(url: str) -> str:
    """A media reference's URL as a path string: ``file://`` decoded, anything else as it is."""
    parsed = urlparse(url)
    if parsed.scheme == "file":  # file:///abs, file://localhost/abs; file://footage/a.mp4 (relative, as AAF writes)
        host = "" if parsed.netloc in ("", "localhost") else parsed.netloc
        return unquote(host + parsed.path)
    return url


def file_name(path: str) -> str:
    """The file name of a path written on any system (``S:\\a\\x.exr`` -> ``x.exr``)."""
    if _WINDOWS.match(path) or ("\\" in path and "/" not in path):
        return PureWindowsPath(path).name
    return PurePosixPath(path).name


def clip_names(clip: Any) -> list[tuple[str, str]]:
    """(name, what it is) for every name ``clip`` gives its media, most telling first."""
    names: list[tuple[str, str]] = []
    url = getattr(clip.media_reference, "target_url", None)
    if url:
        names.append((file_name(reference_path(url)), "file name"))
    cmx = clip.metadata.get("cmx_3600") or {}  # (OpenTimelineIO's AnyDictionary: a mapping, not a dict)
    if not hasattr(cmx, "get"):
        cmx = {}
    comments = cmx.get("comments") or []
    for comment in comments if isinstance(comments, (list, tuple)) or hasattr(comments, "__iter__") else []:
        match = _FILE_COMMENTS.match(str(comment))
        if match:
            names.append((file_name(match.group("path")), "file name in a comment"))
    if clip.name:
        names.append((str(clip.name), "clip name"))
    reel = str(cmx.get("reel") or "")
    if reel.upper() not in _NO_REEL:
        names.append((reel, "reel"))
    return list(dict.fromkeys(n for n in names if n[0].strip()))


def _key(name: str) -> str:
    return name.strip().casefold()


@dataclass
class MediaIndex:
    """The files beside the edit and under the ``--search`` folders (walked once), by name
    and by name without extension, case-blind; the ``--media-map`` entries by name."""

    folder: Path
    search: Sequence[Path] = ()
    media_map: dict[str, Path] = field(default_factory=dict)
    _by_name: Optional[dict[str, list[Path]]] = None
    _by_stem: Optional[dict[str, list[Path]]] = None

    def _walk(self) -> None:
        self._by_name, self._by_stem = {}, {}
        roots = [(self.folder, 0)] + [(Path(s), MAX_SEARCH_DEPTH) for s in self.search]
        seen: set[Path] = set()
        for root, depth in roots:
            for path in _files(root, depth):
                if path in seen:
                    continue
                seen.add(path)
                self._by_name.setdefault(_key(path.name), []).append(path)
                self._by_stem.setdefault(_key(path.stem), []).append(path)

    def lookup(self, name: str) -> list[Path]:
        """Files named ``name`` (or, for a name without that extension, whose stem it is)."""
        if self._by_name is None:
            self._walk()
        assert self._by_name is not None and self._by_stem is not None
        mapped = self.media_map.get(_key(name))
        if mapped is not None:
            return [mapped]
        return self._by_name.get(_key(name)) or self._by_stem.get(_key(name)) or \
            self._by_stem.get(_key(Path(name).stem)) or []


def _files(root: Path, depth: int) -> list[Path]:
    """The files under ``root`` down to ``depth`` levels, hidden ones and links to folders left out."""
    found: list[Path] = []
    if not root.is_dir():
        return found
    base = len(root.parts)
    for here, folders, files in os.walk(root):
        level = len(Path(here).parts) - base
        folders[:] = [f for f in folders if not f.startswith(".")] if level < depth else []
        found += [Path(here) / f for f in files if not f.startswith(".")]
    return sorted(p.absolute() for p in found)


def read_media_map(path: Path) -> dict[str, Path]:
    """A ``--media-map`` CSV: ``name,path`` rows (a clip name, file name or reel; a path absolute
    or relative to the CSV's folder); a header row ``name,path`` is skipped. MediaLookupError in one
    line naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise MediaLookupError(f"--media-map {escaped(str(path))}: cannot be read ({e}); accepted: a UTF-8 CSV "
                               "of name,path rows") from None
    entries: dict[str, Path] = {}
    for number, row in enumerate(csv.reader(text.split("\n")), 1):
        if not row or not "".join(row).strip() or row[0].strip().startswith("#"):
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise MediaLookupError(f"--media-map {escaped(str(path))} line {number}: "
                                   f"{escaped(','.join(row))[:60]!r}; accepted: name,path")
        if number == 1 and [c.strip().lower() for c in row] == ["name", "path"]:
            continue
        target = Path(os.path.expanduser(row[1].strip()))
        entries[_key(row[0])] = (target if target.is_absolute() else path.parent / target).absolute()
    return entries


def find_media(clip: Any, index: MediaIndex, holds: Callable[[Path], Optional[bool]]) -> Optional[Found]:
    """Where ``clip``'s media is (the module's order), or None. ``holds(path)``: whether that
    file's timecode range holds the clip's source range (None: not known), to choose among
    several files of one name. MediaLookupError for two equally good candidates."""
    url = getattr(clip.media_reference, "target_url", None)
    if url:
        given = Path(reference_path(url))
        if not _WINDOWS.match(str(given)):
            path = Path(os.path.normpath(given if given.is_absolute() else index.folder / given))
            if path.is_file():  # (normalised: 'edits/../footage/x.mov' is 'footage/x.mov'; links are kept)
                return Found(path.absolute(), "path")
    for name, what in clip_names(clip):
        candidates = [p for p in dict.fromkeys(index.lookup(name)) if p.is_file()]
        if len(candidates) == 1:
            return Found(candidates[0], f"{what} {escaped(name)!r}")
        if len(candidates) > 1:
            fitting = [p for p in candidates if holds(p)]
            if len(fitting) == 1:
                return Found(fitting[0], f"{what} {escaped(name)!r} and timecode")
            shown = ", ".join(escaped(str(p)) for p in (fitting or candidates)[:6])
            raise MediaLookupError(f"clip {escaped(str(clip.name))!r}: {what} {escaped(name)!r} matches several "
                                   f"files ({shown}){' whose timecode holds it' if fitting else ''}; accepted: one, "
                                   "e.g. named in --media-map")
    return None


__all__ = ["Found", "MediaLookupError", "MediaIndex", "clip_names", "file_name", "find_media", "read_media_map",
           "reference_path"]
