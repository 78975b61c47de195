"""Conform, step one: from an edit (any timeline OpenTimelineIO reads) to the source ranges a
restoration has to render.

:func:`plan_conform` runs in numbered steps:

1. the timeline is read by OpenTimelineIO (``.otio``; through its adapters CMX 3600 ``.edl``,
   Final Cut Pro 7 / Premiere ``.xml``, FCPXML ``.fcpxml``, AAF ``.aaf``, Kdenlive ``.kdenlive``);
2. every video clip's media reference is resolved: an absolute path or ``file://`` URL, a
   path relative to the timeline's folder, or a file of that name under a ``--search`` folder;
   every clip whose media is missing is listed, one line each, before anything else happens;
3. each clip gives the frames of its media the edit shows (:func:`clip_use`): its source range
   at the media's rate, less the media's start timecode, through its time warp (a
   ``LinearTimeWarp``'s speed, a ``FreezeFrame``), widened by the transitions around it
   (OpenTimelineIO's handles of the clip in its track);
4. per media file those frames are widened by ``handles`` on both sides, clamped to the media,
   and merged where they overlap or lie at most ``merge_gap`` frames apart (rendering the gap
   costs less than the cold start of one more piece): the :class:`Piece` objects to render;
5. each piece's start moved back (at most 5 frames) onto its scene's U-Net window grid
   (:func:`align_pieces`), so that its cold start lays its windows where a render of the whole
   source does; this one decodes a little of each source (the scene's start is looked for), so
   ``uav conform --plan`` leaves it to the render (:func:`align_plan`).

The plan says what the conform saves: frames the edit uses, frames it renders, frames in the
sources. Rendering the pieces and writing the relinked timeline: :mod:`vs_uav.app.relink`.
OpenTimelineIO is imported only here and there (``pip install 'vs-uav[conform]'``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional, Sequence

from vs_uav.app.lookup import Found, MediaIndex, MediaLookupError, find_media, read_media_map
from vs_uav.errors import UavError
from vs_uav.untrusted import escaped

DEFAULT_HANDLES = 12


class ConformError(UavError, ValueError):
    """A timeline that cannot be conformed; one line (several, one per missing media file)."""


@dataclass(frozen=True)
class Media:
    """A source file as the plan sees it: its frame rate, its frames, its start timecode (frames)."""

    path: Path
    fps: Fraction
    frames: int
    start: int = 0


@dataclass(frozen=True)
class Use:
    """The frames ``[start, end)`` of a media file that one clip of the edit shows (or
    dissolves through)."""

    clip: str
    start: int
    end: int
    index: int = -1  # the clip's place among the timeline's video clips (video_clips), -1: none
    found: str = ""  # how its media was found (vs_uav.app.lookup.find_media), e.g. "reel 'A001'"


@dataclass(frozen=True)
class Piece:
    """One range of one media file to render: the uses it serves, widened by the handles."""

    media: Media
    start: int
    end: int
    uses: tuple[Use, ...]

    @property
    def frames(self) -> int:
        return self.end - self.start


@dataclass
class ConformPlan:
    timeline: Path
    pieces: list[Piece] = field(default_factory=list)
    handles: int = DEFAULT_HANDLES
    rate: Optional[float] = None  # an EDL's frame rate, as read (read_timeline)
    aligned: bool = False  # step 5 done: each piece starts on its scene's window grid
    warnings: list[str] = field(default_factory=list)  # clips clamped to their media (--clamp)
    left_alone: list[str] = field(default_factory=list)  # what is not rendered and stays as it is

    @property
    def used_frames(self) -> int:
        """Frames of the sources the edit shows (each counted once)."""
        return sum(_union(p.uses for p in self.pieces if p.media == m) for m in self.media)

    @property
    def rendered_frames(self) -> int:
        return sum(p.frames for p in self.pieces)

    @property
    def source_frames(self) -> int:
        return sum(m.frames for m in self.media)

    @property
    def media(self) -> list[Media]:
        return list(dict.fromkeys(p.media for p in self.pieces))

    def summary(self) -> str:
        share = self.rendered_frames / self.source_frames if self.source_frames else 0
        used = f"{self.used_frames} frame{'s' if self.used_frames != 1 else ''}"
        return (f"{len(self.pieces)} piece{'s' if len(self.pieces) != 1 else ''} from {len(self.media)} source"
                f"{'s' if len(self.media) != 1 else ''}: the edit uses {used}, the conform "
                f"renders {self.rendered_frames} with {self.handles}-frame handles, of {self.source_frames} in the "
                f"sources ({share:.0%})")


def _union(groups) -> int:
    spans = sorted((u.start, u.end) for uses in groups for u in uses)
    total, reach = 0, None
    for a, b in spans:
        if reach is None or a > reach:
            total, reach = total + b - a, b
        elif b > reach:
            total, reach = total + b - reach, b
    return total


# -- 1. reading ------------------------------------------------------------------------------------

def _otio():
    try:
        import opentimelineio as otio
    except ImportError:
        raise ConformError("uav conform needs OpenTimelineIO: pip install 'vs-uav[conform]'") from None
    return otio


def read_timeline(path: Path, rate: Optional[float] = None) -> Any:
    """The timeline OpenTimelineIO reads from ``path``; ConformError in one line. ``rate``: the
    frame rate of a CMX 3600 EDL's timecodes, which the file does not say (the adapter's 24
    when None)."""
    otio = _otio()
    path = Path(path)
    if not path.is_file():
        raise ConformError(f"timeline {path} not found")
    edl = path.suffix.lower() == ".edl"
    _check_depth(path)
    used = (rate or edl_rate(path)) if edl else None
    try:
        timeline = otio.adapters.read_from_file(str(path), **({"rate": used} if edl else {}))
    except RecursionError:
        raise ConformError(f"timeline {path}: nested too deeply for its adapter; accepted: an edit of tracks, clips "
                           "and stacks") from None
    except Exception as e:  # noqa: BLE001 - adapters raise their own types: said in one line
        raise ConformError(_unreadable(path, e, otio, rate)) from None
    if not isinstance(timeline, otio.schema.Timeline):
        raise ConformError(f"timeline {path} holds a {type(timeline).__name__}, not a timeline")
    return timeline


# Nesting an edit may have: a JSON timeline's brackets or an XML edit's elements. A real edit of
# stacks in stacks stays far below; OpenTimelineIO's JSON reader overflows its stack (a
# segmentation fault) on 100,000 levels and Python's XML adapters recurse.
MAX_DEPTH = 512


def _check_depth(path: Path) -> None:
    """ConformError in one line for an edit nested deeper than :data:`MAX_DEPTH`, read before
    any adapter recurses into it (.otio JSON, XML edits; an EDL is flat)."""
    from vs_uav.untrusted import nesting_depth

    suffix = path.suffix.lower()
    if suffix not in (".otio", ".xml", ".fcpxml", ".kdenlive", ".mlt"):
        return
    try:
        with open(path, "rb") as f:
            head = f.read(1).lstrip()
            f.seek(0)
            if suffix == ".otio" or head in (b"{", b"["):
                depth = nesting_depth(f.read().decode("utf-8", "replace"), MAX_DEPTH)
            else:
                depth = _xml_depth(f, MAX_DEPTH)
    except OSError as e:
        raise ConformError(f"timeline {path}: cannot be read ({e.strerror})") from None
    if depth > MAX_DEPTH:
        raise ConformError(f"timeline {path}: nested more than {MAX_DEPTH} levels deep; accepted: an edit of "
                           f"tracks, clips and stacks nested up to {MAX_DEPTH} levels")


def _xml_depth(f: Any, limit: int) -> int:
    """How deeply ``f``'s XML elements nest (expat reads without recursing), stopping past ``limit``."""
    import xml.parsers.expat

    parser, depth, deepest = xml.parsers.expat.ParserCreate(), [0], [0]

    class Deep(Exception):
        pass

    def start(*_: Any) -> None:
        depth[0] += 1
        deepest[0] = max(deepest[0], depth[0])
        if deepest[0] > limit:
            raise Deep

    def end(*_: Any) -> None:
        depth[0] -= 1

    parser.StartElementHandler, parser.EndElementHandler = start, end
    try:
        parser.ParseFile(f)
    except Deep:
        pass
    except xml.parsers.expat.ExpatError:
        pass  # not well-formed: the adapter says so in its own words
    return deepest[0]


# Frame rates an EDL may be at, in the order its timecodes' largest frame number picks them.
EDL_RATES = (24.0, 25.0, 30.0, 48.0, 50.0, 60.0)
_TIMECODE = re.compile(r"\b([0-9]{2}):([0-9]{2}):([0-9]{2})([:;])([0-9]{2})\b", re.ASCII)


def edl_rate(path: Path) -> float:
    """The frame rate of a CMX 3600 list, which the file does not say: 29.97 or 59.94 for a
    drop-frame list (``FCM: DROP FRAME``, ``;`` timecodes), else the smallest usual rate above
    every frame number its timecodes count (24 when they all fit, the adapter's default)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return EDL_RATES[0]
    codes = _TIMECODE.findall(text)
    most = max((int(c[4]) for c in codes), default=0)
    drop = re.search(r"^FCM:\s*DROP FRAME", text, re.M | re.I) is not None or any(c[3] == ";" for c in codes)
    if drop:
        return 30000 / 1001 if most < 30 else 60000 / 1001
    return next((r for r in EDL_RATES if most < r), EDL_RATES[-1])


def _unreadable(path: Path, e: Exception, otio: Any, rate: Optional[float]) -> str:
    """The one line for a timeline OpenTimelineIO cannot read: a rate that does not fit, a schema
    newer than this OpenTimelineIO, a suffix no adapter reads, or the adapter's own words."""
    from vs_uav.errors import one_line

    said = one_line(e)
    if "Frame rate mismatch" in said:
        return (f"--rate {rate:g}: the timecodes of {escaped(path.name)} count more frames a second ({said}); "
                "accepted: the edit's frame rate, e.g. --rate 25, or no --rate (found from the timecodes)")
    if "unsupported schema version" in said:
        newer = _newer_schemas(path, otio)
        if newer:
            known = otio.core.type_version_map()
            reads = ", ".join(f"{n.split('.')[0]}.{known.get(n.split('.')[0], 0)}" for n in newer)
            return (f"timeline {escaped(str(path))}: written by a newer OpenTimelineIO (schema {', '.join(newer)}; "
                    f"OpenTimelineIO {otio.__version__} reads up to {reads}); accepted: the edit saved for "
                    f"OpenTimelineIO {otio.__version__} (its schema downgrade on export), or a newer opentimelineio")
    if path.suffix.lower() not in _readable_suffixes(otio):
        return (f"timeline {escaped(str(path))}: no OpenTimelineIO adapter reads {escaped(path.suffix) or 'it'}; "
                f"accepted: {', '.join(_readable_suffixes(otio))}")
    return (f"timeline {escaped(str(path))}: OpenTimelineIO cannot read it ({escaped(said)}); accepted: a well-formed "
            f"{escaped(path.suffix)} timeline (its suffix is one OpenTimelineIO reads: "
            f"{', '.join(_readable_suffixes(otio))})")


def _newer_schemas(path: Path, otio: Any) -> list[str]:
    """The ``Name.N`` schemas of a JSON timeline newer than this OpenTimelineIO reads."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    known = otio.core.type_version_map()
    found = set(re.findall(r'"OTIO_SCHEMA"\s*:\s*"([A-Za-z_][A-Za-z0-9_]*)\.([0-9]+)"', text))
    return sorted(f"{name}.{version}" for name, version in found if int(version) > known.get(name, 1 << 30))


def _readable_suffixes(otio) -> list[str]:
    suffixes = []
    for adapter in otio.adapters.available_adapter_names():
        for suffix in otio.adapters.from_name(adapter).suffixes:
            suffixes.append("." + suffix)
    return sorted(set(suffixes))


# -- 2. media ------------------------------------------------------------------------------------------

def video_clips(timeline: Any) -> list[Any]:
    """Every clip with media on the timeline's video tracks (nested stacks and compound clips
    walked), in track order; generators (titles, solids, bars) are not media (:func:`left_alone`)."""
    otio = _otio()
    clips = [c for track in timeline.video_tracks() for c in track.find_clips()
             if isinstance(c, otio.schema.Clip) and not isinstance(c.media_reference, otio.schema.GeneratorReference)]
    if not clips:
        raise ConformError("the timeline has no video clip; accepted: a timeline with at least one clip of a media "
                           "file on a video track")
    return clips


def left_alone(timeline: Any) -> list[str]:
    """What the conform does not render and the relinked timeline keeps as it is: generators,
    gaps, transitions, effects on tracks, markers, audio tracks; one phrase each kind, counted."""
    otio = _otio()
    counts: dict[str, int] = {}

    def count(kind: str, n: int = 1) -> None:
        if n:
            counts[kind] = counts.get(kind, 0) + n

    for track in timeline.video_tracks():
        for item in track.find_children():
            if isinstance(item, otio.schema.Clip) and isinstance(item.media_reference, otio.schema.GeneratorReference):
                count(f"generator ({item.media_reference.generator_kind or 'title'})")
            elif isinstance(item, otio.schema.Gap):
                count("gap")
            elif isinstance(item, otio.schema.Transition):
                count("transition (its frames rendered with the clips beside it)")
            count("marker", len(getattr(item, "markers", [])))
    count("audio track", len(timeline.audio_tracks()))
    count("marker", len(timeline.tracks.markers))
    return [f"{n} {kind}{'s' if n != 1 and not kind.endswith(')') else ''}" for kind, n in counts.items()]


def media_path(clip: Any, folder: Path, search: Sequence[Path] = ()) -> Optional[Path]:
    """The file ``clip``'s media is (:func:`vs_uav.app.lookup.find_media`), or None."""
    found = _find(clip, MediaIndex(folder, search), {})
    return found.path if found is not None else None


def _find(clip: Any, index: "MediaIndex", probed: dict[Path, Optional["Media"]]) -> Optional["Found"]:
    """:func:`vs_uav.app.lookup.find_media` with the timecode test of a candidate (its probe
    kept in ``probed``); ConformError in one line for candidates that cannot be told apart."""
    def holds(path: Path) -> Optional[bool]:
        if path not in probed:
            try:
                probed[path] = probe_media(path)
            except ConformError:
                probed[path] = None
        media = probed[path]
        source = clip.source_range
        if media is None or source is None or not media.fps:
            return None
        first = round(source.start_time.rescaled_to(float(media.fps)).value) - media.start
        return 0 <= first and first + round(source.duration.rescaled_to(float(media.fps)).value) <= media.frames

    try:
        return find_media(clip, index, holds)
    except MediaLookupError as e:
        raise ConformError(str(e)) from None


def probe_media(path: Path) -> Media:
    """Frame rate and frames of ``path`` as the rendering script reads it (BestSource, through
    the one probe: its frame numbers are the ones a piece is cut at), and its start timecode
    (ffprobe's tag); ConformError in one line when it cannot be read."""
    from vs_uav.media.probe import probe
    from vs_uav.media.script import reading_script
    from vs_uav.media.timecode import timecode_frames

    try:
        info = probe(path, reading_script(path))
    except ValueError as e:
        raise ConformError(str(e)) from None  # the probe's line names the file
    try:
        start = timecode_frames(info.timecode, info.fps) if info.timecode else 0
    except ValueError:
        start = 0  # a tag that is no timecode: the media starts at 0
    return Media(path, info.fps, info.frames, start)


# -- 3. what each clip uses ------------------------------------------------------------------------

def clip_use(clip: Any, media: Media) -> Use:
    """The media frames ``clip`` shows, through its time warp and the transitions beside it."""
    otio = _otio()
    rate = float(media.fps)
    source = clip.source_range or clip.media_reference.available_range
    if source is None:
        raise ConformError(f"clip {clip.name!r}: no source range, and its media reference gives no available "
                           "range; accepted: a clip with a source range")
    start = round(source.start_time.rescaled_to(rate).value) - media.start
    length = max(1, round(source.duration.rescaled_to(rate).value))
    scalar = _speed(clip, otio)
    if scalar == 0:  # a freeze frame
        first, last = start, start + 1
    elif scalar > 0:
        first, last = start, start + math.ceil(length * scalar)
    else:  # reversed: from ``start`` backwards
        first, last = start - math.ceil((length - 1) * -scalar), start + 1
    track = clip.parent()
    before, after = track.handles_of_child(clip) if track is not None else (None, None)
    grow = abs(scalar) or 1
    first -= math.ceil(round(before.rescaled_to(rate).value) * grow) if before is not None else 0
    last += math.ceil(round(after.rescaled_to(rate).value) * grow) if after is not None else 0
    return Use(clip.name or str(media.path.name), first, last)


def _speed(clip: Any, otio) -> float:
    scalar = 1.0
    for effect in clip.effects:
        if isinstance(effect, otio.schema.LinearTimeWarp):
            scalar *= effect.time_scalar
    return scalar


# -- 4. pieces -----------------------------------------------------------------------------------------

def merge_uses(media: Media, uses: Sequence[Use], handles: int, merge_gap: Optional[int] = None) -> list[Piece]:
    """``uses`` of one media widened by ``handles``, clamped to the media, merged where they
    overlap or lie at most ``merge_gap`` frames apart (default: twice the handles)."""
    gap = 2 * handles if merge_gap is None else merge_gap
    pieces: list[Piece] = []
    for use in sorted(uses, key=lambda u: (u.start, u.end)):
        start, end = max(0, use.start - handles), min(media.frames, use.end + handles)
        if pieces and start - pieces[-1].end <= gap:
            last = pieces[-1]
            pieces[-1] = Piece(media, last.start, max(last.end, end), (*last.uses, use))
        else:
            pieces.append(Piece(media, start, end, (use,)))
    return pieces


def plan_conform(path: Path, handles: int = DEFAULT_HANDLES, search: Sequence[Path] = (),
                 merge_gap: Optional[int] = None, rate: Optional[float] = None,
                 scene_cuts: Optional[str] = None, scene_threshold: float = 0.1,
                 media_map: Optional[Path] = None, clamp: bool = False) -> ConformPlan:
    """The steps in the module's docstring; ConformError in one line (one per missing media).
    ``rate``: an EDL's frame rate (:func:`read_timeline`). ``scene_cuts``, ``scene_threshold``:
    the render's (``EncoderSettings``), which step 5 finds the pieces' scenes with; None leaves
    step 5 to :func:`align_plan` (it decodes a little of each source: seconds per piece)."""
    if handles < 0:
        raise ConformError(f"--handles {handles}: accepted: an integer >= 0")
    path = Path(path).absolute()
    edl = path.suffix.lower() == ".edl"
    used = (rate or edl_rate(path)) if edl else rate  # an EDL's rate: given, or found from its timecodes
    timeline = read_timeline(path, used)  # 1.
    clips = video_clips(timeline)
    try:
        index = MediaIndex(path.parent, [Path(s).absolute() for s in search],
                           read_media_map(media_map) if media_map else {})
    except MediaLookupError as e:
        raise ConformError(str(e)) from None
    probed: dict[Path, Optional[Media]] = {}
    found = {id(c): _find(c, index, probed) for c in clips}  # 2.
    missing = [c for c in clips if found[id(c)] is None]
    if missing:
        raise ConformError("\n".join(f"clip {escaped(str(c.name))!r}: media {_named(c)} not found (looked beside "
                                     f"{escaped(path.name)} and in "
                                     f"{', '.join(escaped(str(s)) for s in search) or 'no --search folder'}"
                                     f"{_names(c)})" for c in missing))
    paths = list(dict.fromkeys(f.path for f in found.values() if f is not None))
    media = {p: probed.get(p) or probe_media(p) for p in paths}
    rates = {float(m.fps) for m in media.values()}
    if edl and rate is None and len(rates) == 1 and next(iter(rates)) > used + 1e-3:
        # The media's one rate: the EDL's timecodes count at it (they fitted a lower one by chance).
        return plan_conform(path, handles, search, merge_gap, next(iter(rates)), scene_cuts, scene_threshold,
                            media_map, clamp)
    uses: dict[Path, list[Use]] = {p: [] for p in media}
    outside: list[str] = []
    for number, clip in enumerate(clips):  # 3.
        where = found[id(clip)]
        assert where is not None
        use = clip_use(clip, media[where.path])
        if use.start < 0 or use.end > media[where.path].frames:
            outside.append(_outside(clip, use, media[where.path], clamp))
            use = replace(use, start=min(max(use.start, 0), media[where.path].frames - 1),
                          end=max(min(use.end, media[where.path].frames), 1))
        uses[where.path].append(Use(use.clip, use.start, use.end, number, where.how))
    if outside and not clamp:
        raise ConformError("\n".join(outside))
    plan = ConformPlan(path, handles=handles, rate=used, warnings=outside, left_alone=left_alone(timeline))
    for p, m in media.items():  # 4.
        plan.pieces += merge_uses(m, uses[p], handles, merge_gap)
    return plan if scene_cuts is None else align_plan(plan, scene_cuts, scene_threshold)  # 5.


def align_plan(plan: ConformPlan, scene_cuts: str, scene_threshold: float) -> ConformPlan:
    """Step 5 of :func:`plan_conform`, on a plan made without it (:func:`align_pieces`)."""
    if plan.aligned:
        return plan
    return replace(plan, pieces=align_pieces(plan.pieces, scene_cuts, scene_threshold), aligned=True)


# How far back the first frame of a piece's scene is looked for (seconds of the source).
SCENE_SEARCH_SECONDS = 10


def align_pieces(pieces: Sequence[Piece], scene_cuts: str, threshold: float) -> list[Piece]:
    """Step 5: each piece's start moved back (by at most 5 frames) onto its scene's U-Net window
    grid (:func:`vs_uav.core.tiling.on_window_grid`), its scene's first frame found as the render
    marks it (``scene_cuts`` and ``threshold`` as the encoder's;
    :func:`vs_uav.vsfilter.scenes.scene_start`, looking back up to :data:`SCENE_SEARCH_SECONDS`):
    its cold start then lays windows where a render of the whole source lays them, and from its
    (6 x steps - 3)-th frame on it gives that render's frames exactly (README, "Conform"). A
    piece whose scene start is not found stays as it is."""
    import vapoursynth as vs

    from vs_uav.core.tiling import on_window_grid
    from vs_uav.media.script import reading_script
    from vs_uav.vsfilter.scenes import SceneError, scene_start

    aligned, clips = [], {}
    for piece in pieces:
        namespace: dict[str, Any] = {"__name__": "__vapoursynth__"}
        try:
            if piece.media.path not in clips:
                exec(compile(reading_script(piece.media.path), "<reading>", "exec"), namespace)
                clips[piece.media.path] = namespace["clip"]
            anchor = scene_start(clips[piece.media.path], piece.start, scene_cuts, threshold,
                                 round(SCENE_SEARCH_SECONDS * float(piece.media.fps)))
        except (vs.Error, SceneError) as e:
            from vs_uav.errors import one_line

            raise ConformError(f"{piece.media.path}: its scene cuts could not be read ({one_line(e)})") from None
        start = piece.start if anchor is None else on_window_grid(piece.start, anchor)
        aligned.append(replace(piece, start=start))
    return aligned


def _outside(clip: Any, use: Use, media: Media, clamp: bool) -> str:
    """The line for a clip that needs frames its media does not hold (before 0 or past its end)."""
    name = escaped(str(clip.name))
    said = (f"clip {name!r} needs frames {use.start}-{use.end - 1} of {escaped(media.path.name)}, which holds "
            f"frames 0-{media.frames - 1}")
    return f"{said}: rendered clamped to what exists" if clamp else \
        f"{said}; accepted: a clip within its media, or --clamp to render what exists"


def _names(clip: Any) -> str:
    """For a clip without a path: what it was looked for by (its clip name, reel, comments)."""
    from vs_uav.app.lookup import clip_names

    if getattr(clip.media_reference, "target_url", None):
        return ""
    names = ", ".join(f"{what} {escaped(name)!r}" for name, what in clip_names(clip))
    return f" for {names}" if names else ""


def _named(clip: Any) -> str:
    from vs_uav.untrusted import escaped

    return escaped(getattr(clip.media_reference, "target_url", None) or f"({type(clip.media_reference).__name__})")


def describe(plan: ConformPlan) -> list[str]:
    """One line per piece: the media, its frames, the clips it serves."""
    lines = []
    for piece in plan.pieces:
        clips = ", ".join(dict.fromkeys(escaped(u.clip) + (f" (by {u.found})" if u.found and u.found != "path" else "")
                                        for u in piece.uses))
        lines.append(f"{escaped(str(piece.media.path))}: frames {piece.start}-{piece.end - 1} ({piece.frames} "
                     f"frames) for {clips}")
    if plan.left_alone:
        lines.append(f"left as they are: {', '.join(plan.left_alone)}")
    return lines


__all__ = ["ConformError", "ConformPlan", "DEFAULT_HANDLES", "Media", "Piece", "SCENE_SEARCH_SECONDS", "Use",
           "align_pieces", "align_plan", "clip_use", "describe", "left_alone",
           "media_path", "merge_uses", "plan_conform", "probe_media", "read_timeline", "video_clips"]
