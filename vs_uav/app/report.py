"""How good a render is: ``uav report SOURCE OUTPUT [OUTPUT ...]`` measures each output's
fidelity to the source (and to a reference), its temporal stability against a bicubic
upscale's, its flicker and its colour, per frame, per scene and for the whole clip, and writes
the report (:mod:`vs_uav.app.report_page`).

1. The options are checked (the report's file, the flow method) before anything is read.
2. The files are opened and checked against each other (:func:`vs_uav.media.quality.open_inputs`).
3. The source's scenes are found where a render cuts them.
4. Every frame is measured, a chunk at a time (:func:`vs_uav.media.quality.measure`).
5. Per scene, per clip, the worst frames, and crops of the worst frames before and after.
6. The report is written: HTML (plots and crops embedded), or a one-page PNG, with the same
   numbers as JSON and CSV beside it.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from vs_uav.errors import UavError

logger = logging.getLogger(__name__)

FORMATS = (".html", ".png", ".json", ".csv")
CROP = 192  # output pixels: the side of a before/after crop
WORST = 3  # frames named per measure


class ReportError(UavError, ValueError):
    """One line: what cannot be reported and why."""


@dataclass(frozen=True)
class ReportJob:
    """Measure ``outputs`` (renders of ``source``) and write the report to ``path``."""

    source: Path
    outputs: tuple[Path, ...]
    path: Path
    reference: Optional[Path] = None
    flow: str = "auto"  # auto: RAFT when the model folder has its weights and CUDA runs it, else DIS
    model_dir: Optional[Path] = None  # where RAFT's weights are looked for (default: the model folder)
    scene_cuts: str = "auto"
    scene_threshold: float = 0.1
    # --frames: the outputs render the source's frames first .. end - 1 (uav upscale --frames);
    # the report's frame numbers count from ``first``'s, its timecodes are the source's.
    frame_range: Optional[tuple[int, int]] = None


@dataclass(frozen=True)
class Crop:
    """Before (the source, bicubic 4x), after (each output), and the reference, at one frame."""

    frame: int
    box: tuple[int, int, int, int]  # left, top, width, height in output pixels
    before: Any  # (h, w, 3) uint8
    after: tuple[Any, ...]  # one per output
    reference: Any = None
    why: str = ""


@dataclass(frozen=True)
class Report:
    job: ReportJob
    measurements: Any  # vs_uav.media.quality.Measurements
    crops: tuple[Crop, ...]
    seconds: float

    def to_dict(self) -> dict:
        """The numbers, as the JSON file holds them (NaN as null)."""
        from vs_uav.media.quality import UNITS, figures, scene_ranges, worst_frames

        m = self.measurements
        outputs = []
        for k, series in enumerate(m.outputs):
            outputs.append({
                "path": series.name,
                "clip": _clean(asdict(figures(m, k))),
                "scenes": [{"first": a, "last": b - 1, **_clean(asdict(figures(m, k, a, b)))}
                           for a, b in scene_ranges(m)],
                "worst": asdict(worst_frames(m, k, WORST)),
                "frames": _clean({f: getattr(series, f) for f in ("psnr", "ssim", "psnr_ref", "ssim_ref", "lpips_ref",
                                                                  "ewarp", "luma", "contrast", "mean", "spread")}),
            })
        return {
            "source": str(self.job.source), "reference": str(self.job.reference) if self.job.reference else None,
            "frames": m.frames, "fps": str(m.fps), "timecode": m.timecode, "scene_starts": m.starts,
            "source_first_frame": self.job.frame_range[0] if self.job.frame_range else 0,
            "flow": m.flow, "downscale": "bicubic, antialiased (to the source's size)", "notes": list(m.notes),
            "units": UNITS, "seconds": round(self.seconds, 2),
            "bicubic": {"ewarp": _clean(m.bicubic.ewarp)},
            "source_frames": _clean({f: getattr(m.source, f) for f in ("luma", "contrast", "mean", "spread")}),
            "outputs": outputs,
        }

    def summary(self) -> str:
        """A few lines for the terminal: each output's clip figures."""
        from vs_uav.media.quality import figures

        m = self.measurements
        part = f" (the source's frames {self.job.frame_range[0]}-{self.job.frame_range[1] - 1}: numbered from 0 " \
            "below)" if self.job.frame_range else ""
        lines = [f"{m.frames} frame{'s' if m.frames != 1 else ''}{part}, {len(m.starts)} scene"
                 f"{'s' if len(m.starts) != 1 else ''}, flow: {m.flow}, {self.seconds:.1f} s"]
        for k, series in enumerate(m.outputs):
            f = figures(m, k)
            ref = f"; reference PSNR {f.psnr_ref:.2f} dB SSIM {f.ssim_ref:.4f}" if not math.isnan(f.psnr_ref) else ""
            ref += f" LPIPS {f.lpips_ref:.4f}" if not math.isnan(f.lpips_ref) else ""
            lines.append(f"{Path(series.name).name}: PSNR-LR {f.psnr:.2f} dB, SSIM-LR {f.ssim:.4f}, E*warp "
                         f"{f.ewarp:.3f} (bicubic {f.ewarp_bicubic:.3f}), flicker {f.flicker:.3f} (source "
                         f"{f.flicker_source:.3f}), colour shift R {f.colour_shift[0]:+.2f} G {f.colour_shift[1]:+.2f}"
                         f" B {f.colour_shift[2]:+.2f}{ref}")
        return "\n".join([*lines, *m.notes])


def _clean(value: Any) -> Any:
    """NaN and infinities as null (JSON has neither); floats rounded to 6 places."""
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, 6)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


# -- the steps --------------------------------------------------------------------------------------

def check_job(job: ReportJob) -> None:
    """Step 1: the report's file and the options, before anything is read."""
    from vs_uav.media.quality import QualityError, check_flow

    if job.path.suffix.lower() not in FORMATS:
        raise ReportError(f"-o {job.path}: not a report format; accepted: a file ending in {', '.join(FORMATS)}")
    folder = job.path.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise ReportError(f"-o {job.path}: the folder {folder} {'cannot be written' if folder.is_dir() else 'is missing'}"
                          "; accepted: a file in a folder this user can write")
    if job.path.resolve() in {Path(p).resolve() for p in (job.source, *job.outputs)}:
        raise ReportError(f"-o {job.path}: is one of the inputs; accepted: a new file")
    try:
        check_flow(job.flow)
    except QualityError as e:
        raise ReportError(str(e)) from None
    if job.scene_threshold <= 0 or job.scene_threshold >= 1:
        raise ReportError(f"--scene-threshold {job.scene_threshold}: accepted: a number between 0 and 1")


def run_report(job: ReportJob, progress: Optional[Callable[[int, int], None]] = None,
               stop: Optional[threading.Event] = None) -> tuple[Report, list[Path]]:
    """Steps 1-6: the report and the files written. ReportError in one line."""
    from vs_uav.app.captions import CaptionJobError, scene_starts
    from vs_uav.app.report_page import write_report
    from vs_uav.media.quality import QualityError, flow_for, lpips_measure, measure, open_inputs

    started = time.monotonic()
    check_job(job)  # 1.
    try:
        source, outputs, reference = open_inputs(job.source, job.outputs, job.reference, job.frame_range)  # 2.
        starts = scene_starts(_clip_of(source, job.frame_range), job.scene_cuts, job.scene_threshold)  # 3.
        flow, flow_name = flow_for(job.flow, job.model_dir)
        lpips, note = lpips_measure() if reference is not None else (None, "")
        m = measure(source, outputs, reference, starts, flow, flow_name, progress, stop, lpips,
                    [note] if note else [])  # 4.
    except (QualityError, CaptionJobError) as e:
        raise ReportError(str(e)) from None
    crops = tuple(worst_crops(m, source, outputs, reference))  # 5.
    report = Report(job, m, crops, time.monotonic() - started)
    return report, write_report(report, job.path)  # 6.


def _clip_of(video, frame_range: Optional[tuple[int, int]] = None) -> Any:
    """The source as the render's script reads it (its scene detector looks at that clip), cut
    to ``frame_range`` when the outputs render an excerpt."""
    from vs_uav.media.script import reading_script

    namespace: dict = {"__name__": "__vapoursynth__"}
    exec(compile(reading_script(video.path), f"<reading {video.path}>", "exec"), namespace)
    clip = namespace["clip"]
    return clip[frame_range[0]:frame_range[1]] if frame_range is not None else clip


def worst_crops(m, source, outputs: Sequence, reference) -> list[Crop]:
    """Step 5's crops: for each of the first output's worst frames (fidelity, then stability,
    then flicker), the square where that output differs most from the bicubic upscale."""
    from vs_uav.media.quality import worst_frames

    if not outputs:
        return []
    worst = worst_frames(m, 0, WORST)
    reasons = {**{t: "flicker" for t in worst.flicker}, **{t: "least stable (E*warp)" for t in worst.stability},
               **{t: "lowest fidelity (PSNR-LR)" for t in worst.fidelity}}
    return [crop_at(t, source, outputs, reference, reasons[t]) for t in worst.frames()[:4]]


def crop_at(frame: int, source, outputs: Sequence, reference, why: str = "") -> Crop:
    import torch
    import torch.nn.functional as F

    from vs_uav.core.quality import luma, upscale
    from vs_uav.media.quality import read_frames

    src = read_frames(source, [frame])
    outs = [read_frames(o, [frame]) for o in outputs]
    h, w = outs[0].shape[-2:]
    before = upscale(src, (h, w))
    side = min(CROP, h, w)
    diff = F.avg_pool2d((luma(outs[0]) - luma(before)).abs(), side, stride=max(1, side // 4))
    y, x = divmod(int(diff.flatten().argmax()), diff.shape[-1])
    left, top = min(x * max(1, side // 4), w - side), min(y * max(1, side // 4), h - side)

    def cut(t: torch.Tensor) -> Any:
        part = t[0, :, top:top + side, left:left + side]
        return (part * 255).round().clamp(0, 255).byte().permute(1, 2, 0).contiguous().numpy()

    ref = cut(read_frames(reference, [frame])) if reference is not None else None
    return Crop(frame, (left, top, side, side), cut(before), tuple(cut(o) for o in outs), ref, why)
