"""Scene cuts: where a new shot starts, so that nothing is carried across it.

``uav.Upscale`` starts fresh at frames whose ``_SceneChangePrev`` prop is set
(``scene_change=True``): no propagation, no U-Net context and no look-ahead crosses a cut.
:func:`mark_cuts` sets that prop; every generated ``.vpy`` calls it before the filter
(:func:`script_lines`), and the cluster cuts its segments at the same frames
(:func:`cuts_of`, :func:`plan_segments`).

The detector measures the mean absolute luma difference between a frame and the one before
it, on grey copies at most :data:`DETECT_WIDTH` pixels wide, in 0..1 (``std.PlaneStats``'
``PlaneStatsDiff``: the measure of VapourSynth's former ``misc.SCDetect``, which R81's core
no longer has), and the share of the copy's blocks that changed. A frame starts a new scene
when most of the picture changed and its difference is above the threshold or stands out
from the motion around it (:func:`is_cut`): a new drawing in limited animation stands out
too, but leaves the background as it was. It is computed per frame inside the graph, so a
script marks cuts lazily, in any request order, and the cluster's driver and workers find
the same ones. Measured on a labelled set (tests/cut_set.py, bench/bench_scenes.py; README,
"Scene cuts"): cuts 0.11-0.20 with 1.00 of the blocks changed, drawing changes and
continuous shots at most 0.056 and 0.50 of the blocks.

VapourSynth is imported only by the functions that build graphs; the segment planning
(:func:`scenes`, :func:`plan_segments`) is pure Python.
"""

from __future__ import annotations

import logging
import math
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

from vs_uav.errors import UavError

if TYPE_CHECKING:
    import vapoursynth as vs


logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.1
DETECT_WIDTH = 64  # grey copies this wide: grain and compression noise average out, and it is cheap
AUTO, NONE = "auto", "none"  # EncoderSettings.scene_cuts besides a file
_PROP = "UAVScene"  # PlaneStats' prop prefix on the detector's grey copies


class SceneError(UavError, ValueError):
    """A cut list or option that cannot be used; one line naming it and what is accepted."""


# -- detection (VapourSynth) ---------------------------------------------------------------------

def _differences(clip: "vs.VideoNode", threshold: float = DEFAULT_THRESHOLD) -> "vs.VideoNode":
    """Grey copies of ``clip`` whose frame n carries ``UAVSceneDiff``, its mean absolute luma
    difference to frame n-1 in 0..1, and ``UAVSceneCoverAverage``, the share of its blocks
    (:data:`BLOCK` pixels square) whose mean difference is above ``CHANGED x threshold``
    (both 0 for frame 0)."""
    import vapoursynth as vs

    core = vs.core
    fmt = clip.format
    if fmt is None or clip.width == 0 or clip.height == 0:
        raise SceneError("scene cuts: the clip has a variable format or size; accepted: a constant one")
    width = min(DETECT_WIDTH, clip.width)
    height = max(1, round(clip.height * width / clip.width))
    if fmt.color_family == vs.RGB:  # luma by BT.709; the measure only compares frames with each other
        clip = core.resize.Bilinear(clip, format=vs.YUV444P16 if fmt.bits_per_sample > 8 else vs.YUV444P8,
                                    matrix_s="709")
    luma = core.std.ShufflePlanes(clip, 0, vs.GRAY) if clip.format.num_planes > 1 else clip
    grey = core.resize.Bilinear(luma, width, height, format=vs.GRAY8)
    previous = grey[0] + grey[:-1] if grey.num_frames > 1 else grey  # one frame: grey[:-1] is empty
    stats = core.std.PlaneStats(grey, previous, prop=_PROP)
    # Block means of |difference| (a downscale averages), then the share of changed blocks.
    delta = core.std.Expr([grey, previous], "x y - abs 255 /", format=vs.GRAYS)
    blocks = core.resize.Bilinear(delta, max(1, round(width / BLOCK)), max(1, round(height / BLOCK)))
    changed = core.std.Expr(blocks, f"x {CHANGED * threshold!r} > 1 0 ?")
    cover = core.std.PlaneStats(changed, prop=f"{_PROP}Cover")
    return core.std.CopyFrameProps(stats, cover, props=[f"{_PROP}CoverAverage"])


# A frame below the threshold is still a cut when it stands out from the motion around it: its
# difference at least RATIO times the mean of its WINDOW neighbours' on each side (plus EPS, so
# that a still shot's noise is no cut), and at least FLOOR x the threshold. This catches a cut
# between two similar shots that the plain threshold misses.
WINDOW = 2
RATIO = 4.0
FLOOR = 0.25
EPS = 0.002
# Either way most of the picture must have changed: at least COVER of the blocks, each BLOCK
# grey pixels square, by more than CHANGED x the threshold on average. A new drawing in limited
# animation (a face or a figure jumps, the background stays, between held frames) stands out
# from its still neighbours but changes a region only: measured at most 0.50 of the blocks,
# real cuts 1.00 (0.83 for a mirrored shot of the same video; README, "Scene cuts").
BLOCK = 8
COVER = 0.65
CHANGED = 0.4


def is_cut(n: int, difference: float, neighbours: Sequence[float], threshold: float, cover: float = 1.0) -> bool:
    """The one rule: frame n (not the first) starts a scene when at least :data:`COVER` of its
    blocks changed (``cover``) and its difference to frame n-1 is above ``threshold``, or
    stands out from ``neighbours`` (the differences of the frames within :data:`WINDOW` of it,
    frame 0 excluded) as described above."""
    if n == 0 or cover < COVER:
        return False
    if difference > threshold:
        return True
    local = sum(neighbours) / len(neighbours) if neighbours else 0.0
    return difference > FLOOR * threshold and difference > RATIO * (local + EPS)


def _window(n: int, num_frames: int) -> list[int]:
    """The frames whose differences are ``n``'s neighbours."""
    return [j for j in range(max(1, n - WINDOW), min(num_frames, n + WINDOW + 1)) if j != n]


def mark_cuts(clip: "vs.VideoNode", threshold: float = DEFAULT_THRESHOLD, cuts_file: Optional[str] = None,
              cuts: Optional[Iterable[int]] = None) -> "vs.VideoNode":
    """``clip`` with ``_SceneChangePrev`` set at scene cuts: detected with ``threshold``
    (:func:`is_cut`), or exactly the frames of ``cuts`` or of the text file ``cuts_file``
    (:func:`read_cuts`), which replace detection. The prop says what was found: 0 on every
    other frame. Frames are computed lazily, in any order."""
    import vapoursynth as vs

    core = vs.core
    num = clip.num_frames
    if cuts_file is not None or cuts is not None:
        listed = set(read_cuts(cuts_file, num) if cuts_file is not None else check_cuts(cuts or (), num, "cuts"))

        def listed_props(n: int, f: vs.VideoFrame) -> vs.VideoFrame:
            out = f.copy()
            out.props["_SceneChangePrev"] = int(n in listed and n > 0)
            return out

        return core.std.ModifyFrame(clip, clip, listed_props)
    threshold = check_threshold(threshold)
    stats = _differences(clip, threshold)
    # shifted[k]'s frame n carries frame n + k - WINDOW's difference (clamped at the ends: unused there).
    shifted = []
    for k in range(-WINDOW, WINDOW + 1):
        if k < 0:
            shifted.append(stats[0] * min(-k, num) + stats[:num + k] if num + k > 0 else stats)
        elif k > 0:
            shifted.append(stats[k:] + stats[-1] * k if num > k else stats[-1] * num)
        else:
            shifted.append(stats)
    key = f"{_PROP}Diff"

    def detected(n: int, f: list[vs.VideoFrame]) -> vs.VideoFrame:
        diffs = {n + k - WINDOW: frame.props[key] for k, frame in enumerate(f[1:])}
        cover = f[1 + WINDOW].props[f"{_PROP}CoverAverage"]
        out = f[0].copy()
        out.props["_SceneChangePrev"] = int(is_cut(n, diffs[n], [diffs[j] for j in _window(n, num)], threshold,
                                                   cover))
        return out

    return core.std.ModifyFrame(clip, [clip, *shifted], detected)


def detect(clip: "vs.VideoNode", threshold: float = DEFAULT_THRESHOLD, first: int = 0,
           end: Optional[int] = None) -> list[int]:
    """The frames among ``first .. end - 1`` (default: all) that :func:`mark_cuts` marks with
    ``threshold``, sorted: one pass over those frames' grey copies and their neighbours'
    (decoding, not upscaling)."""
    threshold = check_threshold(threshold)
    num = clip.num_frames
    end = num if end is None else end
    lo, hi = max(0, first - WINDOW), min(num, end + WINDOW)
    props = {lo + i: (f.props[f"{_PROP}Diff"], f.props[f"{_PROP}CoverAverage"])
             for i, f in enumerate(_differences(clip, threshold)[lo:hi].frames(close=True))}
    return [n for n in range(first, end)
            if is_cut(n, props[n][0], [props[j][0] for j in _window(n, num)], threshold, props[n][1])]


def check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise SceneError(f"scene_threshold={threshold!r}; accepted: a number in (0, 1]")
    return float(threshold)


def check_cuts(cuts: Iterable[int], num_frames: int, name: str = "cuts") -> list[int]:
    """``cuts`` sorted and without repeats; SceneError for a frame outside the clip."""
    out = set()
    for c in cuts:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < num_frames:
            raise SceneError(f"{name}: frame {c!r}; accepted: frame numbers in [0, {num_frames - 1}]")
        out.add(c)
    return sorted(out)


def read_cuts(path: os.PathLike | str, num_frames: int) -> list[int]:
    """The frames listed in a cut file, sorted: one frame number per line (the first frame of
    a scene, counted from 0 in the clip given to the filter); blank lines and ``#`` comments
    are skipped. SceneError naming the file, the line and what is accepted."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SceneError(f"--scene-cuts {str(path)!r} cannot be read ({getattr(e, 'strerror', None) or e}); "
                         "accepted: 'auto', 'none' or a text file of frame numbers, one per line") from None
    cuts = []
    for number, line in enumerate(text.splitlines(), 1):
        word = line.split("#", 1)[0].strip()
        if not word:
            continue
        try:
            value = int(word)
        except ValueError:
            value = None
        if value is None or not 0 <= value < num_frames:
            raise SceneError(f"--scene-cuts {str(path)!r} line {number}: {word!r}; accepted: one frame number "
                             f"in [0, {num_frames - 1}] per line")
        cuts.append(value)
    return sorted(set(cuts))


def cuts_of(clip: "vs.VideoNode", scene_cuts: str, threshold: float, first: int = 0,
            end: Optional[int] = None) -> list[int]:
    """The cuts the script :func:`script_lines` writes for ``scene_cuts`` ('auto', 'none' or a
    cut list's path, as ``EncoderSettings.scene_cuts``) marks in ``clip``, among its frames
    ``first .. end - 1`` (default: all)."""
    if scene_cuts == NONE:
        return []
    end = clip.num_frames if end is None else end
    if scene_cuts == AUTO:
        return detect(clip, threshold, first, end)
    return [c for c in read_cuts(scene_cuts, clip.num_frames) if c > 0 and first <= c < end]


def scene_start(clip: "vs.VideoNode", n: int, scene_cuts: str, threshold: float, limit: int) -> Optional[int]:
    """The first frame of the scene frame ``n`` of ``clip`` belongs to, as the script that
    :func:`script_lines` writes for ``scene_cuts`` marks it: the last cut at or before ``n``, or
    0; None when detection finds no cut within ``limit`` frames before ``n`` (the scene may
    start anywhere before). Detection reads back in blocks from ``n``, not the whole clip."""
    if scene_cuts == NONE:
        return 0
    if scene_cuts != AUTO:
        return max([0, *(c for c in read_cuts(scene_cuts, clip.num_frames) if c <= n)])
    end = n + 1
    while end > 0 and n - end < limit:
        first = max(0, end - _SCAN_BLOCK, n - limit)
        cuts = detect(clip, threshold, first, end)
        if cuts:
            return cuts[-1]
        end = first
    return 0 if end == 0 else None


_SCAN_BLOCK = 96  # frames read at a time when scene_start looks back


def script_lines(scene_cuts: str, threshold: float) -> list[str]:
    """The lines a generated ``.vpy`` marks cuts with, before ``uav.Upscale`` ([] for 'none')."""
    if scene_cuts == NONE:
        return []
    if scene_cuts == AUTO:
        call = f"threshold={threshold!r}"
        why = (f"Scene cuts: a frame whose mean luma difference to the previous one (0..1) is above "
               f"{threshold:g}, or that stands out from the motion around it, starts a new scene "
               "when most of the picture changed: uav.Upscale carries nothing across it.")
    else:
        # Absolute, as every path a generated script names (media.output.absolute is a layer above).
        call = f"cuts_file={os.path.abspath(os.path.expanduser(scene_cuts))!r}"
        why = "Scene cuts: the frames listed in this file start new scenes: uav.Upscale carries nothing across them."
    lines = ["# " + line for line in textwrap.wrap(why, 86, break_on_hyphens=False)]
    return [*lines, "import vs_uav", f"clip = vs_uav.mark_cuts(clip, {call})", ""]


# -- segments (pure) ---------------------------------------------------------------------------

@dataclass(frozen=True, order=True)
class Segment:
    """Frames ``start`` .. ``stop - 1``, rendered as one piece. ``cold``: it starts inside a
    scene (``--split-long``), so its first frames differ from a whole render's."""

    start: int
    stop: int
    cold: bool = False

    @property
    def frames(self) -> int:
        return self.stop - self.start

    @property
    def name(self) -> str:
        return f"seg{self.start:08d}-{self.stop:08d}"


def scenes(cuts: Sequence[int], num_frames: int) -> list[tuple[int, int]]:
    """The clip split at ``cuts``: (first, end) of each scene, in order."""
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < num_frames), num_frames]
    return [(a, b) for a, b in zip(bounds, bounds[1:])]


def plan_segments(cuts: Sequence[int], num_frames: int, target: int, split_long: int = 0,
                  align: int = 1) -> list[Segment]:
    """The work of a clip, longest first: consecutive scenes merged while a segment stays
    within ``target`` frames (a longer scene is a segment of its own), so segments start only
    at cuts and render exactly what a whole render gives. ``split_long`` > 0: a scene longer
    than that many frames is split into near-equal pieces of at most that length, starting at
    multiples of ``align`` (the chunk size: no chunk is split); each later piece starts cold
    (no look-ahead past the split, nothing carried into the next piece), so its frames differ
    from a whole render's."""
    if num_frames < 1:
        raise SceneError(f"a clip of {num_frames} frames; accepted: at least 1 frame")
    if target < 1:
        raise SceneError(f"--segment-seconds gives {target} frames; accepted: at least 1 frame")
    if split_long < 0 or align < 1:
        raise SceneError(f"split_long={split_long}, align={align}; accepted: split_long >= 0, align >= 1")
    pieces: list[Segment] = []
    for a, b in scenes(cuts, num_frames):
        if split_long and b - a > split_long:
            count = math.ceil((b - a) / split_long)
            edges = [a]
            for i in range(1, count):
                edge = a + round((b - a) * i / count / align) * align
                if edges[-1] < edge < b:
                    edges.append(edge)
            edges.append(b)
            pieces.extend(Segment(s, e, cold=s != a) for s, e in zip(edges, edges[1:]))
        else:
            pieces.append(Segment(a, b))
    merged: list[Segment] = []
    for piece in pieces:
        last = merged[-1] if merged else None
        if last is not None and not piece.cold and piece.stop - last.start <= target:
            merged[-1] = Segment(last.start, piece.stop, last.cold)
        else:
            merged.append(piece)
    return sorted(merged, key=lambda s: (-s.frames, s.start))
