"""Conform, step two: the planned pieces rendered through the job layer, and the edit relinked
to them.

:func:`run_conform` runs in numbered steps:

1. the plan (:func:`vs_uav.app.conform.plan_conform`), each piece's start on its scene's window
   grid (:func:`vs_uav.app.conform.align_plan`);
2. one :class:`~vs_uav.app.job.UpscaleJob` per piece (:func:`conform_jobs`): the source's
   frames of the piece only (``frame_range``), into ``FOLDER/<source>.<first>-<last>.uav.mkv``,
   which carries the timecode of the piece's first frame and its part of the audio; the jobs
   run as one queue (:func:`vs_uav.app.queue.run_queue`): every piece checked before the first
   renders, finished ones skipped on a re-run, the cluster, presets and scene cuts as for
   ``uav upscale``;
3. once every piece is rendered, the relinked timeline (:func:`relink`) written next to them
   (:func:`write_timelines`): ``EDIT.uav.otio``, and ``EDIT.uav.<ext>`` in the edit's own format
   where its adapter writes one.

The relinked timeline is the edit with each video clip's media reference replaced by its
piece's file, whose available range starts at the piece's first frame in the source's
timecode: the clip's source range is kept as it was, so it shows the same source frames (an
NLE relinking by timecode finds the same). Tracks, gaps, transitions, markers, effects and
audio clips stay as they were.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from vs_uav.app.conform import ConformError, ConformPlan, Piece, read_timeline, video_clips

if TYPE_CHECKING:
    from vs_uav.app.job import UpscaleJob
    from vs_uav.app.queue import QueueEvents, QueueResult
    from vs_uav.media.encoder import EncoderSettings
    from vs_uav.settings import UpscaleSettings

# The relinked timeline's name, next to the pieces: cut.otio -> cut.uav.otio (and cut.uav.edl).
RELINKED = "{stem}.uav{suffix}"


def source_names(sources: Sequence[Path]) -> dict[Path, str]:
    """The name each source's files get in the output folder: its stem, or where two sources
    share a stem (``a/clip.mp4``, ``b/CLIP.mov``; compared case-blind, as some file systems do)
    the stem and a short hash of its path, so that no source's pieces overwrite another's."""
    stems = [Path(s).stem.casefold() for s in sources]
    return {Path(s): Path(s).stem if stems.count(Path(s).stem.casefold()) == 1 else
            f"{Path(s).stem}-{hashlib.sha256(str(s).encode()).hexdigest()[:8]}" for s in sources}


def piece_output(piece: Piece, folder: Path, encoder: "EncoderSettings", name: str = "") -> Path:
    """Where ``piece`` is rendered: ``FOLDER/<name>.<first>-<last>.uav<container>``, ``name`` its
    source's (:func:`source_names`; the source's stem by default)."""
    return Path(folder) / f"{name or piece.media.path.stem}.{piece.start}-{piece.end - 1}.uav{encoder.container}"


def conform_jobs(plan: ConformPlan, folder: Path, settings: "UpscaleSettings", encoder: "EncoderSettings",
                 **options: Any) -> list["UpscaleJob"]:
    """Step 2: one job per piece of ``plan`` (``options``: :meth:`UpscaleJob.create`'s)."""
    from vs_uav.app.job import UpscaleJob

    captions = _captions_files(plan, folder, settings, encoder)
    names = source_names(list(dict.fromkeys(p.media.path for p in plan.pieces)))
    return [UpscaleJob.create(p.media.path, settings, replace(encoder, captions=captions.get(p.media.path, "")),
                              piece_output(p, folder, encoder, names[p.media.path]), frame_range=(p.start, p.end),
                              **options)
            for p in plan.pieces]


def _captions_files(plan: ConformPlan, folder: Path, settings: "UpscaleSettings",
                    encoder: "EncoderSettings") -> dict[Path, str]:
    """Each source's captions file: with --prompt auto one per source in the folder
    (``reel1.captions.tsv``), written by its first piece and used by the others; --captions
    names one file, for an edit of one source only."""
    from vs_uav.app.captions import AUTO_PROMPT
    from vs_uav.app.job import JobError

    sources = list(dict.fromkeys(p.media.path for p in plan.pieces))
    if encoder.captions:
        if len(sources) > 1:
            raise JobError(f"--captions {encoder.captions}: accepted for an edit of one source; this one uses "
                           f"{len(sources)}: use --prompt auto (one captions file per source)")
        return {sources[0]: encoder.captions} if sources else {}
    if settings.prompt.strip().lower() != AUTO_PROMPT:
        return {}
    names = source_names(sources)
    return {s: str(folder / f"{names[s]}.captions.tsv") for s in sources}


def relink(plan: ConformPlan, outputs: Sequence[Path]) -> Any:
    """Step 3: a copy of ``plan``'s timeline whose video clips show the same source frames from
    the piece files (``outputs[i]`` rendered ``plan.pieces[i]``)."""
    import opentimelineio as otio

    timeline = read_timeline(plan.timeline, plan.rate).deepcopy()
    clips = video_clips(timeline)
    piece_of = {use.index: (piece, Path(out)) for piece, out in zip(plan.pieces, outputs) for use in piece.uses}
    for index, clip in enumerate(clips):
        if index not in piece_of:
            raise ConformError(f"clip {clip.name!r}: no piece of the plan serves it (the timeline changed since "
                               "it was planned)")
        piece, output = piece_of[index]
        rate = float(piece.media.fps)
        shown = clip.trimmed_range()  # the source frames the clip shows, in the source's timecode
        # (read before the reference is replaced: the old one may go with it)
        was = getattr(clip.media_reference, "target_url", "") or ""
        clip.media_reference = otio.schema.ExternalReference(
            target_url=output.absolute().as_uri(),
            available_range=otio.opentime.TimeRange(otio.opentime.RationalTime(piece.media.start + piece.start, rate),
                                                    otio.opentime.RationalTime(piece.frames, rate)))
        clip.media_reference.name = output.name
        clip.media_reference.metadata["vs_uav"] = {"source": was, "frames": [piece.start, piece.end - 1]}
        clip.source_range = shown
    return timeline


# What an adapter needs to write a relinked timeline: the AAF writer wants Avid mob IDs, which
# files made by vs-uav have not (new ones are made).
_WRITE_OPTIONS = {".aaf": {"use_empty_mob_ids": True}}


def write_timelines(timeline: Any, edit: Path, folder: Path, rate: Optional[float] = None) -> tuple[list[Path], str]:
    """``EDIT.uav.otio`` in ``folder`` (ConformError when it cannot be written), and
    ``EDIT.uav.<ext>`` in the edit's format where its adapter writes one, read back and compared
    with the .otio (``rate``: an EDL's): (the files written, one line when the edit's format
    could not be written or loses something the .otio keeps, else ""). Each file is written
    under a temporary name, then renamed."""
    edit = Path(edit)
    written = [_write(timeline, Path(folder) / RELINKED.format(stem=edit.stem, suffix=".otio"))]
    if edit.suffix.lower() == ".otio" or not _writable(edit.suffix):
        return written, ""
    try:
        written.append(_write(timeline, Path(folder) / RELINKED.format(stem=edit.stem, suffix=edit.suffix)))
    except ConformError as e:
        return written, f"{e}; {written[0].name} holds it"
    return written, round_trip_loss(timeline, written[1], rate, written[0].name)


def _shown(clip: Any) -> tuple[str, Any]:
    url = getattr(clip.media_reference, "target_url", "") or ""
    return Path(url).name, clip.source_range


def round_trip_loss(timeline: Any, written: Path, rate: Optional[float], reference: str) -> str:
    """One line when ``written``, read back, does not show what ``timeline`` shows (each video
    clip's piece and source range), e.g. a CMX 3600 dissolve's incoming clip, which the list
    can only give the outgoing clip's file; "" when it does."""
    from vs_uav.untrusted import escaped

    clips = video_clips(timeline)
    if rate is None and written.suffix.lower() == ".edl":  # the rate it was written at: its clips'
        rate = next((c.source_range.start_time.rate for c in clips if c.source_range is not None), None)
    try:
        back = video_clips(read_timeline(written, rate))
    except ConformError as e:
        return f"{escaped(written.name)} cannot be read back ({e}); {reference} is the reference"
    if len(back) != len(clips):
        return (f"{escaped(written.name)} reads back {len(back)} video clips of {len(clips)}: its format loses some; "
                f"{reference} is the reference")
    lost = [(c, b) for c, b in zip(clips, back) if _shown(c)[0] != _shown(b)[0]]
    if not lost:
        return ""
    clip, got = lost[0]
    whose = "1 clip's" if len(lost) == 1 else f"{len(lost)} clips'"
    return (f"{escaped(written.name)}: its format loses {whose} media on the way back (clip "
            f"{escaped(str(clip.name))!r} reads as {escaped(_shown(got)[0]) or 'no file'!r}, not "
            f"{escaped(_shown(clip)[0])!r}; a CMX 3600 list names one file per event, and a dissolve's incoming "
            f"clip gets the outgoing one's); {reference} is the reference")


def _write(timeline: Any, target: Path) -> Path:
    import opentimelineio as otio

    tmp = target.with_name(f".{target.stem}.tmp{target.suffix}")
    try:
        otio.adapters.write_to_file(timeline, str(tmp), **_WRITE_OPTIONS.get(target.suffix.lower(), {}))
    except Exception as e:  # noqa: BLE001 - adapters raise their own types: said in one line
        from vs_uav.errors import one_line

        tmp.unlink(missing_ok=True)
        raise ConformError(f"the relinked timeline {target}: OpenTimelineIO cannot write it ({one_line(e)})"
                           ) from None
    tmp.replace(target)
    return target


def _writable(suffix: str) -> bool:
    import opentimelineio as otio

    try:
        adapter = otio.adapters.from_filepath("x" + suffix)
    except Exception:  # noqa: BLE001 - no adapter for it
        return False
    return adapter.has_feature("write_to_file") or adapter.has_feature("write_to_string")


@dataclass
class ConformResult:
    plan: ConformPlan
    queue: "QueueResult"
    timelines: list[Path]  # the relinked timelines written; [] when a piece failed
    note: str = ""  # one line when the edit's own format could not be written (the .otio was)

    @property
    def ok(self) -> bool:
        return self.queue.ok and bool(self.timelines)


def run_conform(plan: ConformPlan, folder: Path, settings: "UpscaleSettings", encoder: "EncoderSettings",
                events: Optional["QueueEvents"] = None, stop: Optional[threading.Event] = None,
                **options: Any) -> ConformResult:
    """Steps 2-3 of the module's docstring for a ``plan`` made by step 1. JobStopped when
    ``stop`` is set (the pieces finished so far are kept; the same command renders the rest)."""
    from vs_uav.app.queue import run_queue

    from vs_uav.app.conform import align_plan

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plan = align_plan(plan, encoder.scene_cuts, encoder.scene_threshold)
    jobs = conform_jobs(plan, folder, settings, encoder, **options)
    result = run_queue(jobs, events, stop)
    if not result.ok:
        return ConformResult(plan, result, [])
    timelines, note = write_timelines(relink(plan, [j.output for j in jobs]), plan.timeline, folder, plan.rate)
    return ConformResult(plan, result, timelines, note)


__all__ = ["ConformResult", "conform_jobs", "piece_output", "relink", "run_conform", "source_names", "write_timelines"]
