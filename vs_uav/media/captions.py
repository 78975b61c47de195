"""Captions per scene: the prompt of each shot, written to a file a person can read and edit.

``uav caption`` (and ``uav upscale --prompt auto``) captions one picture per scene
(:func:`caption_scenes`) and writes the captions file (:func:`write_captions`); the generated
script applies it with :func:`apply_captions`, which sets each scene's frames' ``UAVPrompt``
prop; ``uav.Upscale`` reads it (the quality suffix still appended), and a prompt change starts
a new piece, as a cut does.

The file is tab-separated text, one line per scene::

    # vs-uav captions ...
    frame	timecode	picture	caption
    0	00:00:00:00	4	A koala sitting in a tree
    120	00:00:04:20	127

``frame`` is the scene's first frame (what counts), ``timecode`` where it is, ``picture`` the
frame that was captioned, ``caption`` the prompt (blank: the render's ``--prompt``). Lines
starting with ``#`` are comments.

The picture of a scene is the sharpest of a few frames spread over it, never a near-flat
frame (a fade): :func:`pick_frame`. Captions are cached by the picture's pixels and the
captioner's weights (:func:`caption_cache_dir`), so a second run costs nothing, not even the
captioner's loading.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Optional, Sequence

import numpy as np

from vs_uav.errors import UavError
from vs_uav.untrusted import is_ascii_digits

if TYPE_CHECKING:
    import vapoursynth as vs

    from vs_uav.engine.captioner import Captioner

logger = logging.getLogger(__name__)

HEADER = ("frame", "timecode", "picture", "caption")
CANDIDATES = 5  # frames looked at per scene
EDGE = 2  # frames left out at each end of a scene long enough: fades and dissolves live there
FLAT = 4.0  # luma standard deviation (0..255) below which a frame is a fade, not a picture


class CaptionsError(UavError, ValueError):
    """A captions file that cannot be used: one line naming the file, the line and what is accepted."""


@dataclass(frozen=True)
class SceneCaption:
    """One scene's line: its first frame, its timecode, the frame captioned, the caption."""

    frame: int
    timecode: str = ""
    picture: Optional[int] = None
    caption: str = ""


# -- the file ------------------------------------------------------------------------------------

def write_captions(path: os.PathLike | str, scenes: Sequence[SceneCaption], note: str = "") -> Path:
    """Write the captions file (atomically: a temporary file renamed into place)."""
    path = Path(path)
    lines = ["# vs-uav captions: one line per scene; edit the captions (a blank one uses --prompt), keep the frames.",
             *([f"# {line}" for line in note.splitlines()] if note else []), "\t".join(HEADER)]
    for s in scenes:
        caption = " ".join(s.caption.split())  # one line, no tabs
        lines.append(f"{s.frame}\t{s.timecode}\t{'' if s.picture is None else s.picture}\t{caption}")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_captions(path: os.PathLike | str, num_frames: Optional[int] = None,
                  starts: Optional[Iterable[int]] = None) -> list[SceneCaption]:
    """The scenes of a captions file, checked: frame numbers increasing, below ``num_frames``
    and, with ``starts`` (the scenes' first frames), each one a scene's first frame.
    CaptionsError naming the file and line otherwise."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors write one) is no text
    except FileNotFoundError:
        raise CaptionsError(f"captions file {path}: no such file; accepted: a file `uav caption` wrote") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CaptionsError(f"captions file {path}: cannot be read ({e}); accepted: UTF-8 text") from None
    known = None if starts is None else sorted(set(starts) | {0})
    scenes: list[SceneCaption] = []
    # Lines end at LF (CRLF too) only: a caption may hold U+2028 or a form feed, which splitlines() splits at.
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip() or line.lstrip().startswith("#") or line.split("\t")[0].strip() == HEADER[0]:
            continue
        scene = _parse_line(path, number, line)
        if scenes and scene.frame <= scenes[-1].frame:
            raise CaptionsError(f"{path} line {number}: frame {scene.frame} after frame {scenes[-1].frame}; "
                                "accepted: scenes in order, each frame once")
        if num_frames is not None and scene.frame >= num_frames:
            raise CaptionsError(f"{path} line {number}: frame {scene.frame}; accepted: a frame of the clip "
                                f"(0..{num_frames - 1})")
        if known is not None and scene.frame not in known:
            raise CaptionsError(f"{path} line {number}: frame {scene.frame} is not a scene start ({_starts(known)}); "
                                "accepted: the first frame of a scene, as `uav caption` writes it")
        scenes.append(scene)
    return scenes


def _starts(known: Sequence[int]) -> str:
    shown = ", ".join(map(str, known[:6]))
    return f"the scenes start at {shown}{', ...' if len(known) > 6 else ''}"


def _parse_line(path: Path, number: int, line: str) -> SceneCaption:
    fields = line.split("\t", 3)
    accepted = "frame<TAB>timecode<TAB>picture<TAB>caption, the frame a whole number"
    if len(fields) < 3:  # (3: a blank caption whose tab an editor trimmed)
        said = "no tabs" if len(fields) == 1 else f"{len(fields)} columns"
        raise CaptionsError(f"{path} line {number}: {line[:40]!r} has {said}; accepted: {accepted}")
    frame, timecode, picture, caption = (*fields, "")[:4]
    if not is_ascii_digits(frame.strip()):
        raise CaptionsError(f"{path} line {number}: frame {frame.strip()[:20]!r}; accepted: {accepted}")
    if picture.strip() and not is_ascii_digits(picture.strip()):
        raise CaptionsError(f"{path} line {number}: picture {picture.strip()[:20]!r}; accepted: a frame number "
                            "or nothing")
    return SceneCaption(int(frame), timecode.strip(), int(picture) if picture.strip() else None,
                        " ".join(caption.split()))


# -- the script's side -----------------------------------------------------------------------------

def apply_captions(clip: "vs.VideoNode", captions: os.PathLike | str) -> "vs.VideoNode":
    """``clip`` with each scene's caption in its frames' ``UAVPrompt`` prop (a blank caption
    removes the prop: the filter's ``prompt`` applies); frames before the first line keep
    theirs. ``uav.Upscale`` denoises each scene with its prompt (and the quality suffix)."""
    import vapoursynth as vs

    from vs_uav.vsfilter.upscale import PROMPT_PROP

    if not isinstance(clip, vs.VideoNode):
        raise CaptionsError(f"apply_captions: clip must be a video clip, got {type(clip).__name__}")
    try:
        scenes = read_captions(captions, clip.num_frames)
    except CaptionsError as e:
        raise CaptionsError(f"apply_captions: {e}") from None
    if not scenes:
        return clip
    core = vs.core
    ends = [s.frame for s in scenes[1:]] + [clip.num_frames]
    parts = [clip[:scenes[0].frame]] if scenes[0].frame else []
    for scene, end in zip(scenes, ends):
        part = clip[scene.frame:end]
        parts.append(core.std.SetFrameProps(part, **{PROMPT_PROP: scene.caption}) if scene.caption
                     else core.std.RemoveFrameProps(part, PROMPT_PROP))
    return core.std.Splice(parts) if len(parts) > 1 else parts[0]


# -- pictures --------------------------------------------------------------------------------------

def candidates(first: int, end: int, count: int = CANDIDATES) -> list[int]:
    """Frames spread evenly over the scene ``first .. end - 1``, its first and last
    :data:`EDGE` frames left out when it is long enough."""
    lo, hi = (first + EDGE, end - EDGE) if end - first > 4 * EDGE else (first, end)
    n = min(count, hi - lo)
    return sorted({lo + round(i * (hi - 1 - lo) / max(1, n - 1)) for i in range(n)})


def sharpness(picture: np.ndarray) -> float:
    """The variance of the Laplacian of the picture's luma; 0 for a near-flat picture (a fade
    to black or white, a blank frame), which is never chosen."""
    luma = picture[..., :3].astype(np.float32) @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    if luma.std() < FLAT:
        return 0.0
    lap = luma[1:-1, :-2] + luma[1:-1, 2:] + luma[:-2, 1:-1] + luma[2:, 1:-1] - 4 * luma[1:-1, 1:-1]
    return float(lap.var())


def pick_frame(pictures: dict[int, np.ndarray]) -> int:
    """The sharpest of the pictures; the first when all are flat."""
    scores = {n: sharpness(p) for n, p in pictures.items()}
    best = max(scores, key=lambda n: (scores[n], -n))
    return best if scores[best] > 0 else min(pictures)


def rgb24(clip: "vs.VideoNode") -> "vs.VideoNode":
    """The clip as 8-bit RGB, converted with its own colour props (as the filter converts)."""
    import vapoursynth as vs

    from vs_uav.vsfilter.upscale import to_rgb

    rgbs, _ = to_rgb(clip)
    return vs.core.resize.Bicubic(rgbs, format=vs.RGB24, range_in=vs.RANGE_FULL, range=vs.RANGE_FULL)


def picture_of(rgb: "vs.VideoNode", n: int) -> np.ndarray:
    frame = rgb.get_frame(n)
    return np.stack([np.asarray(frame[p]) for p in range(3)], axis=-1).copy()


# -- captioning ------------------------------------------------------------------------------------

def caption_cache_dir() -> Path:
    """``$UAV_CAPTION_CACHE``, else ``captions/`` in the user cache folder."""
    env = os.environ.get("UAV_CAPTION_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("vs-uav")) / "captions"


class CaptionCache:
    """Captions by (picture's pixels, captioner's identity), one small JSON file each."""

    def __init__(self, folder: Optional[Path], identity: str):
        self.folder, self.identity = folder, identity
        self.misses = 0  # pictures the captioner captioned

    def _path(self, picture: np.ndarray) -> Optional[Path]:
        if self.folder is None:
            return None
        h = hashlib.sha256(self.identity.encode())
        h.update(repr(picture.shape).encode())
        h.update(np.ascontiguousarray(picture).tobytes())
        return self.folder / f"{h.hexdigest()[:32]}.json"

    def get(self, picture: np.ndarray) -> Optional[str]:
        path = self._path(picture)
        try:
            return json.loads(path.read_text(encoding="utf-8"))["caption"] if path is not None else None
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent or damaged: captioned again

    def put(self, picture: np.ndarray, caption: str) -> None:
        path = self._path(picture)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps({"caption": caption, "captioner": self.identity.split("|")[0]}),
                           encoding="utf-8")
            os.replace(tmp, path)
        except OSError as e:  # a cache that cannot be written costs time, not the captions
            logger.warning("caption cache %s cannot be written (%s); captions are not kept", self.folder, e)


# Progress: (scenes done, scenes in all); returns nothing. Stop: set to cancel between scenes.
Progress = Callable[[int, int], None]


class Cancelled(UavError, RuntimeError):
    pass


def caption_scenes(clip: "vs.VideoNode", cuts: Sequence[int], load: Callable[[], "Captioner"], cache: CaptionCache,
                   timecode: Callable[[int], str], progress: Optional[Progress] = None,
                   stop: Optional[threading.Event] = None) -> list[SceneCaption]:
    """One caption per scene of ``clip`` (scenes start at 0 and at ``cuts``): its picture is
    :func:`pick_frame`'s, its caption the cache's or the captioner's (``load()`` runs on the
    first picture the cache does not know, and the captioner is closed at the end)."""
    rgb = rgb24(clip)
    starts = [0, *sorted(c for c in set(cuts) if 0 < c < clip.num_frames)]
    ends = [*starts[1:], clip.num_frames]
    captioner = None
    scenes = []
    try:
        for i, (first, end) in enumerate(zip(starts, ends)):
            if stop is not None and stop.is_set():
                raise Cancelled(f"captioning stopped after {i} of {len(starts)} scenes")
            pictures = {n: picture_of(rgb, n) for n in candidates(first, end)}
            chosen = pick_frame(pictures)
            caption = cache.get(pictures[chosen])
            if caption is None:
                captioner = captioner or load()
                caption = captioner.caption(pictures[chosen])
                cache.misses += 1
                cache.put(pictures[chosen], caption)
            scenes.append(SceneCaption(first, timecode(first), chosen, caption))
            if progress is not None:
                progress(i + 1, len(starts))
    finally:
        if captioner is not None:
            captioner.close()  # before the diffusion model loads: the GPU's memory is its
    return scenes
