"""What a cluster render is given (:class:`ClusterJob`), what it reports while it runs
(:class:`ClusterProgress`) and what it did (:class:`ClusterResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from vs_uav.app.cluster.worker import SegmentResult

if TYPE_CHECKING:
    from vs_uav.media.encoder import EncoderSettings
    from vs_uav.media.output import OutputSpec
    from vs_uav.settings import UpscaleSettings


@dataclass
class ClusterJob:
    """A generated script and how its frames become ``output`` (see :func:`render_cluster`)."""

    script: Path  # the .vpy, in the work folder's job folder
    source: Path  # the audio comes from it
    video: Path  # what the script reads (the source, or its deinterlaced copy)
    output: Path
    settings: "UpscaleSettings"
    encoder: "EncoderSettings"
    spec: "OutputSpec"
    filter_file: Optional[Path] = None
    prepare: Sequence[str] = ()
    frame_range: Optional[tuple[int, int]] = None  # an excerpt of the clip (its segments numbered from its first)


@dataclass
class ClusterProgress:
    """What the driver reports about once a second: frames done (finished segments and the
    frames written of running ones), throughput of this run, ETA, busy workers."""

    done: int
    total: int
    fps: Optional[float]
    eta: Optional[float]
    busy: int
    workers: int
    segments_done: int
    segments: int

    def line(self) -> str:
        eta = "--:--" if self.eta is None else _clock(self.eta)
        fps = "-" if self.fps is None else f"{self.fps:.2f}"
        return (f"{self.done}/{self.total} frames, {fps} fps, ETA {eta}, {self.busy}/{self.workers} workers busy, "
                f"{self.segments_done}/{self.segments} segments")


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


@dataclass
class ClusterResult:
    output: Path
    frames: int
    segments: int
    resumed: int  # segments found finished in the work folder, not rendered again
    rendered: list[SegmentResult] = field(default_factory=list)
    workers: int = 0
    nodes: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        fps = sum(r.segment.frames for r in self.rendered) / self.seconds if self.seconds else 0
        return (f"{self.frames} frames in {_count(self.segments, 'segment')} ({self.resumed} already done) on "
                f"{_count(self.workers, 'worker')}, {_count(self.nodes, 'node')}, in {self.seconds:.0f} s "
                f"({fps:.2f} fps)")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"
