"""Measuring renders against their source, frame by frame, through VapourSynth: what ``uav
report`` and the preview's numbers read.

1. Every file is checked before a frame is read: finished (no ``.partial`` name, a header whose
   duration its frames fill), the outputs 4x the source and as long, a reference of the
   outputs' size (:func:`open_inputs`).
2. The source's scenes are found where the render cuts them; nothing is measured across a cut.
3. Frames are read a chunk at a time (:func:`chunk_frames`: 8 frames of every file up to 1080p,
   and the last frame of the chunk before), so memory stays flat at any length (:func:`measure`):
   - the flow between neighbouring source frames (RAFT or DIS, on the source, as Lai et al.
     compute it on the input video: every output and the bicubic baseline are measured along
     the same motion and the same visibility mask), scaled to the output's size;
   - each output's E*warp along it, and the same on the source upscaled by a plain bicubic
     resize (the baseline);
   - each output downscaled to the source's size (bicubic, antialiased) against the source:
     PSNR and SSIM; with a reference, the output against it;
   - each frame's mean luma and local contrast, and its channels' means and spreads (an
     output's at the source's size, downscaled as above: colour compared at one scale).
4. Flicker follows from the per-frame luma and contrast (:func:`vs_uav.core.quality.jitter`).

Units as reported: PSNR in dB, SSIM 0..1, E*warp in 10^-3 (values 0..1), flicker, colour means
and spreads in 8-bit code values (0..255).
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from vs_uav.errors import UavError

if TYPE_CHECKING:
    import torch
    import vapoursynth as vs

    from vs_uav.core.flow import FlowEstimator
    from vs_uav.media.probe import MediaInfo

logger = logging.getLogger(__name__)

SCALE = 4  # the model's factor: an output is 4x its source
CHUNK = 8  # frames read at a time from each file, at 1080p output and below
CHUNK_PIXELS = CHUNK * 1920 * 1080  # beyond 1080p, fewer: the memory a chunk takes stays the same
FLOWS = ("auto", "raft", "dis")
CODE = 255.0  # 8-bit code values per unit
MIN_SIDE = 16  # source pixels: DIS needs 12, SSIM's window 11


UNITS = {"psnr": "dB (output downscaled to the source's size, against the source)",
         "ssim": "0..1 (as psnr)", "psnr_ref": "dB (against the reference)", "ssim_ref": "0..1 (against the reference)",
         "lpips_ref": "LPIPS (AlexNet) against the reference, lower is closer; computed when its weights are present",
         "ewarp": "E*warp, 10^-3 (frame t against frame t+1 warped back along the source's flow, visible pixels)",
         "luma": "mean luma, 8-bit code values", "contrast": "local contrast (luma spread in tiles), 8-bit code values",
         "flicker": "|a frame's mean luma - its neighbours' in the scene|, 8-bit code values",
         "mean": "channel means R, G, B, 8-bit code values", "spread": "channel standard deviations, 8-bit code values"}


class QualityError(UavError, ValueError):
    """An input the report cannot measure: one line naming it, what it is and what is accepted."""


class Stopped(Exception):
    """The measuring was stopped (between chunks)."""


@dataclass(frozen=True)
class Video:
    """An opened input: its path, what it is called in messages, its RGB clip and its probe."""

    path: Path
    option: str
    rgb: "vs.VideoNode"
    media: "MediaInfo"

    @property
    def size(self) -> tuple[int, int]:
        return self.media.width, self.media.height


@dataclass
class Series:
    """One video's numbers per frame (NaN where a measure does not apply)."""

    name: str
    psnr: list[float] = field(default_factory=list)  # against the source, downscaled
    ssim: list[float] = field(default_factory=list)
    psnr_ref: list[float] = field(default_factory=list)  # against the reference
    ssim_ref: list[float] = field(default_factory=list)
    lpips_ref: list[float] = field(default_factory=list)  # against the reference, when LPIPS can run
    ewarp: list[float] = field(default_factory=list)  # pair (t, t+1), at t; NaN at a scene's last frame
    luma: list[float] = field(default_factory=list)  # mean luma
    contrast: list[float] = field(default_factory=list)  # local contrast
    mean: list[tuple[float, float, float]] = field(default_factory=list)  # R, G, B
    spread: list[tuple[float, float, float]] = field(default_factory=list)


@dataclass
class Measurements:
    """Everything :func:`measure` read: the scenes, the flow used, the source's own numbers,
    the bicubic baseline's E*warp and each output's series."""

    frames: int
    fps: Fraction
    starts: list[int]  # the scenes' first frames, 0 first
    flow: str  # which flow, in words
    source: Series
    bicubic: Series
    outputs: list[Series]
    timecode: str = ""
    notes: tuple[str, ...] = ()  # what was not measured, and how to get it


# -- 1. the inputs ---------------------------------------------------------------------------------

def check_finished(path: Path, option: str) -> None:
    """``path`` is a finished video file or image sequence, not a render still being written."""
    from vs_uav.media.probe import ffprobe_json
    from vs_uav.media.sequence import is_pattern

    inside = [p.name for p in path.parents][:3]
    if path.stem.endswith(".partial") or any(n.startswith(".uav-partial") or n.endswith(".uav-work") for n in inside):
        raise QualityError(f"{option} {path}: a partial file (a render writes inside its work folder and renames "
                           "the output into place when it is done); accepted: a finished output")
    if is_pattern(path):
        return
    if not path.is_file():
        raise QualityError(f"{option} {path}: file not found")
    data, said = ffprobe_json(["-select_streams", "v:0", "-count_packets", "-show_entries",
                               "stream=nb_read_packets,avg_frame_rate,duration:stream_tags=DURATION:format=duration"],
                              path)
    if not data:
        raise QualityError(f"{option} {path}: not a finished, readable video ({said or 'ffprobe read nothing'})")
    stream = (data.get("streams") or [{}])[0]
    try:
        frames, rate = int(stream["nb_read_packets"]), Fraction(stream.get("avg_frame_rate", "0/1"))
    except (KeyError, ValueError, ZeroDivisionError):
        raise QualityError(f"{option} {path}: has no video stream; accepted: a video file") from None
    if said:  # ffprobe read the file to its end and complained: cut off, or damaged on the way
        raise QualityError(f"{option} {path}: damaged or cut off (ffprobe: {said}); accepted: a finished output")
    duration = _video_duration(stream, data.get("format", {}))
    # No duration: a file written to a pipe (a streamed Matroska) has none, and is whole.
    expected = round(duration * rate) if duration is not None and rate else frames
    if frames < expected - 1:
        raise QualityError(f"{option} {path}: ends early, {frames} of the {expected} frames its header announces "
                           "(a partial or cut-off file); accepted: a finished output")


def _video_duration(stream: dict, container: dict) -> Optional[float]:
    """The video stream's duration in seconds as the muxer wrote it when it finished (MP4: the
    stream's; Matroska: its DURATION tag), else the container's; None when none is written."""
    for text in (stream.get("duration"), (stream.get("tags") or {}).get("DURATION"), container.get("duration")):
        if text in (None, "N/A", ""):
            continue
        try:
            if ":" in text:
                h, m, sec = text.split(":")
                return int(h) * 3600 + int(m) * 60 + float(sec)
            return float(text)
        except ValueError:
            continue
    return None


def open_video(path: Path, option: str) -> Video:
    """Step 1 for one file: checked, probed and read as RGB as the filter reads it."""
    from vs_uav.media.probe import probe
    from vs_uav.media.script import reading_script
    from vs_uav.vsfilter.upscale import to_rgb

    from vs_uav.media.sequence import find_sequence, is_sequence

    path = Path(path).expanduser()
    if is_sequence(path):  # a folder of numbered images: its pattern
        try:
            path = find_sequence(path).pattern
        except ValueError as e:
            raise QualityError(f"{option} {path}: {e}") from None
    check_finished(path, option)
    reading = reading_script(path)
    try:
        media = probe(path, reading)
    except ValueError as e:
        raise QualityError(f"{option} {path}: {str(e).removeprefix(f'input {path}: ')}") from None
    namespace: dict = {"__name__": "__vapoursynth__"}
    exec(compile(reading, f"<reading {path}>", "exec"), namespace)
    rgb, _ = to_rgb(namespace["clip"])
    return Video(path, option, rgb, media)


def open_inputs(source: Path, outputs: Sequence[Path], reference: Optional[Path] = None,
                frame_range: Optional[tuple[int, int]] = None) -> tuple[Video, list[Video], Optional[Video]]:
    """Step 1: the source, the outputs and the reference, opened and checked against each other.
    ``frame_range``: (first, end): the outputs are renders of the source's frames first .. end - 1
    (``uav upscale --frames``, a conform's piece), which the source is cut to."""
    if not outputs:
        raise QualityError("OUTPUT: none given; accepted: one or more renders of SOURCE")
    src = open_video(source, "SOURCE")
    if frame_range is not None:
        src = _excerpt(src, *frame_range)
    if min(src.size) < MIN_SIDE:
        raise QualityError(f"SOURCE {src.path}: {src.size[0]}x{src.size[1]}; accepted: at least {MIN_SIDE}x{MIN_SIDE} "
                           "pixels (the flow and SSIM need them)")
    outs = [open_video(p, "OUTPUT") for p in outputs]
    want = (src.size[0] * SCALE, src.size[1] * SCALE)
    for out in outs:
        if out.size != want:
            raise QualityError(f"OUTPUT {out.path}: {out.size[0]}x{out.size[1]} is not {SCALE}x the source's "
                               f"{src.size[0]}x{src.size[1]}; accepted: {want[0]}x{want[1]}")
        if out.media.frames != src.media.frames:
            raise QualityError(f"OUTPUT {out.path}: {out.media.frames} frames, the source has {src.media.frames}; "
                               "accepted: a render of the whole source")
    ref = open_video(reference, "--reference") if reference is not None else None
    if ref is not None:
        if ref.size != want:
            raise QualityError(f"--reference {ref.path}: {ref.size[0]}x{ref.size[1]}; accepted: the outputs' size "
                               f"{want[0]}x{want[1]}")
        if ref.media.frames != src.media.frames:
            raise QualityError(f"--reference {ref.path}: {ref.media.frames} frames, the source has "
                               f"{src.media.frames}; accepted: the same frames as the source")
    return src, outs, ref


def _excerpt(src: Video, first: int, end: int) -> Video:
    """The source cut to frames first .. end - 1, timed and timecoded as the excerpt's render is."""
    from dataclasses import replace

    from vs_uav.media.probe import excerpt

    if not 0 <= first < end <= src.media.frames:
        raise QualityError(f"--frames {first}-{end - 1}: the source has frames 0-{src.media.frames - 1}; accepted: "
                           "FIRST-LAST within them, as the output was rendered with")
    try:
        media = excerpt(src.media, first, end)
    except ValueError as e:
        raise QualityError(str(e)) from None
    return replace(src, rgb=src.rgb[first:end], media=media)


def check_flow(flow: str) -> str:
    if flow not in FLOWS:
        raise QualityError(f"--flow {flow}: not a flow method; accepted: {', '.join(FLOWS)}")
    return flow


def flow_for(flow: str, model_dir: Optional[Path] = None, cuda: Optional[bool] = None
             ) -> tuple["FlowEstimator", str]:
    """The estimator for ``--flow`` and what the report calls it: RAFT when asked, or for 'auto'
    when the model folder holds its weights and a CUDA GPU runs it (on a CPU RAFT-large costs
    about 12x DIS: hours for minutes of 1080p); DIS otherwise. ``cuda``: whether a GPU is there
    (default: torch says)."""
    import torch

    from vs_uav.core.flow import DisFlow, flow_estimator
    from vs_uav.weights.folder import ModelLoadError, default_model_dir, load_raft, raft_weights

    check_flow(flow)
    cuda = torch.cuda.is_available() if cuda is None else cuda
    folder = model_dir or default_model_dir()
    weights = raft_weights(folder) if flow != "dis" else None
    if flow == "raft" and weights is None:
        raise QualityError(f"--flow raft: no RAFT weights (propagator/raft-things.pth) in {folder}; accepted: dis, "
                           "or a model folder that has them")
    if weights is None or (flow == "auto" and not cuda):
        # The preset's own finest scale: a third of the time of the propagation's full-size patches,
        # and the source of a report is full-size video, not a latent's few pixels.
        said = "; RAFT's weights are there: --flow raft uses them, about 12x slower on a CPU" if weights else ""
        return DisFlow(finest_scale=None), f"DIS (OpenCV, medium preset, on the source{said})"
    try:
        raft = load_raft(weights, "cuda" if cuda else "cpu")
    except ModelLoadError as e:
        raise QualityError(f"--flow {flow}: {e}") from None
    return flow_estimator("raft", raft), f"RAFT-large ({weights}, on the source, {'CUDA' if cuda else 'CPU'})"


# -- 3. reading and measuring ----------------------------------------------------------------------

class Prefetch:
    """Frames asked of VapourSynth ahead of their use: it decodes and converts them on its own
    threads while torch measures the chunk before."""

    def __init__(self) -> None:
        self._pending: dict[tuple[int, int], Any] = {}

    def ask(self, video: Optional[Video], frames: Sequence[int]) -> None:
        if video is not None:
            for n in frames:
                self._pending.setdefault((id(video), n), video.rgb.get_frame_async(n))

    def take(self, video: Video, n: int) -> Any:
        future = self._pending.pop((id(video), n), None)
        return (future if future is not None else video.rgb.get_frame_async(n)).result()


def read_frames(video: Video, frames: Sequence[int], prefetch: Optional[Prefetch] = None) -> "torch.Tensor":
    """(len(frames), 3, H, W) float32 RGB in [0, 1]. All the frames are asked for at once (or
    were, through ``prefetch``), so VapourSynth decodes them on its threads meanwhile."""
    import numpy as np
    import torch

    prefetch = prefetch or Prefetch()
    prefetch.ask(video, frames)
    w, h = video.size
    out = torch.empty((len(frames), 3, h, w), dtype=torch.float32)
    for i, n in enumerate(frames):
        f = prefetch.take(video, n)
        planes = out[i].numpy()
        for p in range(3):
            planes[p] = np.asarray(f[p])
    return out.clamp_(0, 1)


def _take(frames: "torch.Tensor", index: Sequence[int]) -> "torch.Tensor":
    """frames[index], a view when the indices are consecutive (the usual case: no copy of 4K frames)."""
    if index and list(index) == list(range(index[0], index[0] + len(index))):
        return frames[index[0]:index[0] + len(index)]
    return frames[list(index)]


def _pairs(first: int, end: int, starts: set[int]) -> list[int]:
    """The frames t in [first, end - 1) whose pair (t, t+1) lies in one scene."""
    return [t for t in range(first, end - 1) if t + 1 not in starts]


def _per_frame(series: Series, frames: "torch.Tensor", block: int, small: Optional["torch.Tensor"] = None) -> None:
    """Mean luma and local contrast of ``frames``; the channel statistics of ``small`` (an
    output downscaled to the source's size: colour compared with the source's at one scale)."""
    from vs_uav.core.quality import channel_stats, local_contrast, luma

    y = luma(frames)
    series.luma += (y.flatten(1).mean(1) * CODE).tolist()
    series.contrast += (local_contrast(frames, block, y) * CODE).tolist()
    mean, spread = channel_stats(frames if small is None else small)
    series.mean += [tuple(v) for v in (mean * CODE).tolist()]
    series.spread += [tuple(v) for v in (spread * CODE).tolist()]


def _ewarp(frames: "torch.Tensor", pairs: Sequence[int], along, first: int) -> list[float]:
    """E*warp of (t, t+1) for each t of ``pairs`` (frame numbers; ``frames[0]`` is ``first``),
    ``along``: the pairs' (grid, mask) at the frames' size."""
    from vs_uav.core.quality import EWARP_SCALE, warping_error

    if not pairs:
        return []
    grid, mask = along
    a = _take(frames, [t - first for t in pairs])
    b = _take(frames, [t + 1 - first for t in pairs])
    return (warping_error(a, b, grid, mask) * EWARP_SCALE).tolist()


@dataclass
class _Chunk:
    """The frames of one chunk, with the previous chunk's last frame first when it is read."""

    first: int  # the frame number of index 0
    new: int  # the frame number of the first frame not measured before
    end: int


def _fill(series: Series, chunk: _Chunk, pairs: Sequence[int], values: Sequence[float]) -> None:
    """E*warp of the chunk's pairs into ``series.ewarp`` (NaN where no pair starts)."""
    got = dict(zip(pairs, values))
    start = len(series.ewarp)
    series.ewarp += [got.get(t, math.nan) for t in range(start, chunk.end - 1)]


def measure(source: Video, outputs: Sequence[Video], reference: Optional[Video], starts: Sequence[int],
            flow: "FlowEstimator", flow_name: str = "", progress: Optional[Callable[[int, int], None]] = None,
            stop: Optional[threading.Event] = None, lpips: Optional[Callable] = None,
            notes: Sequence[str] = ()) -> Measurements:
    """Step 3: every measure of every frame, :data:`CHUNK` frames at a time (``lpips``: a
    :func:`lpips_measure`, used against the reference)."""
    import torch

    n = source.media.frames
    scene_starts = set(starts)
    src_series, bicubic = Series(str(source.path)), Series("bicubic")
    out_series = [Series(str(o.path)) for o in outputs]
    big = (source.size[1] * SCALE, source.size[0] * SCALE)  # (H, W)
    step = chunk_frames(big)
    prefetch = Prefetch()
    with torch.inference_mode():
        for new in range(0, n, step):
            if stop is not None and stop.is_set():
                raise Stopped()
            chunk = _Chunk(max(0, new - 1), new, min(n, new + step))
            ahead = range(chunk.end, min(n, chunk.end + step))  # the next chunk's new frames
            for video in (source, reference, *outputs):
                prefetch.ask(video, ahead)
            _measure_chunk(chunk, source, outputs, reference, scene_starts, flow, big,
                           src_series, bicubic, out_series, lpips, prefetch)
            if progress is not None:
                progress(chunk.end, n)
    for s in (bicubic, *out_series):
        s.ewarp += [math.nan] * (n - len(s.ewarp))  # the last frame starts no pair
    return Measurements(n, source.media.fps, sorted(scene_starts | {0}), flow_name or flow.method, src_series,
                        bicubic, out_series, source.media.timecode, tuple(notes))


def chunk_frames(size: tuple[int, int]) -> int:
    """Frames per chunk for outputs of ``size`` (h, w): :data:`CHUNK` up to 1080p, fewer above
    (2 at 4K), so that a chunk's frames, flow grid and masks hold the same memory."""
    return max(2, min(CHUNK, CHUNK_PIXELS // max(1, size[0] * size[1])))


def _measure_chunk(chunk: _Chunk, source: Video, outputs: Sequence[Video], reference: Optional[Video],
                   starts: set[int], flow: "FlowEstimator", big: tuple[int, int], src_series: Series,
                   bicubic: Series, out_series: Sequence[Series], lpips: Optional[Callable] = None,
                   prefetch: Optional[Prefetch] = None) -> None:
    import torch.nn.functional as F

    from vs_uav.core.quality import downscale, psnr, ssim, upscale, visible, warp_grid

    index = list(range(chunk.first, chunk.end))
    src = read_frames(source, index, prefetch)
    fresh = slice(chunk.new - chunk.first, None)  # the frames not measured before
    pairs = _pairs(chunk.first, chunk.end, starts)
    along = None
    if pairs:  # the source's flow, scaled to the outputs' size once for all of them
        fw, bw = flow.bidirectional(_take(src, [t - chunk.first for t in pairs]) * 2 - 1,
                                    _take(src, [t + 1 - chunk.first for t in pairs]) * 2 - 1)
        along = (warp_grid(fw, big), F.interpolate(visible(fw, bw), size=big, mode="nearest"))
    _per_frame(src_series, src[fresh], _block(1))
    _fill(bicubic, chunk, pairs, _ewarp(upscale(src, big), pairs, along, chunk.first))
    ref = read_frames(reference, index[fresh.start:], prefetch) if reference is not None else None
    small = src.shape[-2:]
    for video, series in zip(outputs, out_series):
        out = read_frames(video, index, prefetch)
        _fill(series, chunk, pairs, _ewarp(out, pairs, along, chunk.first))
        now = out[fresh]
        lr = downscale(now, small)
        series.psnr += psnr(lr, src[fresh]).tolist()
        series.ssim += ssim(lr, src[fresh]).tolist()
        if ref is not None:
            series.psnr_ref += psnr(now, ref).tolist()
            series.ssim_ref += ssim(now, ref).tolist()
            if lpips is not None:
                series.lpips_ref += lpips(now, ref)
        _per_frame(series, now, _block(SCALE), lr)


LPIPS_WEIGHTS = "alexnet-owt-7be5be79.pth"  # torchvision's ImageNet AlexNet, LPIPS' backbone


def lpips_measure() -> tuple[Optional[Callable[["torch.Tensor", "torch.Tensor"], list[float]]], str]:
    """LPIPS (Zhang et al. 2018, AlexNet, as torchmetrics computes it) per frame pair in [0, 1],
    when torchmetrics and torchvision are installed and torchvision's AlexNet weights are in
    torch's hub cache (vs-uav never downloads them); else None and a line saying how to get it."""
    import torch

    path = Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_WEIGHTS
    how = ("python -c 'import torchvision; torchvision.models.alexnet(weights=\"DEFAULT\")' once with internet "
           "puts it there")
    try:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity
    except ImportError:
        return None, "LPIPS: not computed: needs torchmetrics and torchvision (pip install 'vs-uav[perceptual]')"
    if not path.is_file():
        return None, f"LPIPS: not computed: no AlexNet weights at {path} ({how})"
    metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True).eval()

    def run(a: "torch.Tensor", b: "torch.Tensor") -> list[float]:
        return [float(metric(a[i:i + 1], b[i:i + 1])) for i in range(a.shape[0])]

    return run, f"LPIPS: AlexNet ({path})"


def _block(scale: int) -> int:
    """Local contrast over the same picture area in the source (8 px) and an output (32 px)."""
    from vs_uav.core.quality import CONTRAST_BLOCK

    return CONTRAST_BLOCK * scale


# -- 4. per scene, per clip, the worst frames ---------------------------------------------------------

@dataclass(frozen=True)
class Figures:
    """One output's numbers over a stretch of frames (NaN: nothing to measure there)."""

    psnr: float
    ssim: float
    psnr_ref: float
    ssim_ref: float
    lpips_ref: float
    ewarp: float
    ewarp_bicubic: float  # the source upscaled by a bicubic resize: the baseline
    flicker: float  # mean luma jitter
    flicker_source: float
    contrast_flicker: float
    contrast_flicker_source: float
    colour_shift: tuple[float, float, float]  # the output's channel means minus the source's
    spread_shift: tuple[float, float, float]  # its channel spreads minus the source's


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def scene_ranges(m: Measurements) -> list[tuple[int, int]]:
    """(first, end) of each scene."""
    bounds = [*m.starts, m.frames]
    return list(zip(bounds, bounds[1:]))


def flicker(m: Measurements, series: Series) -> tuple[list[float], list[float]]:
    """Per-frame luma and contrast jitter of ``series`` within its scenes."""
    from vs_uav.core.quality import jitter

    return jitter(series.luma, m.starts), jitter(series.contrast, m.starts)


def figures(m: Measurements, k: int, first: int = 0, end: Optional[int] = None) -> Figures:
    """Output ``k``'s numbers over frames ``first .. end - 1`` (default: the whole clip)."""
    end = m.frames if end is None else end
    out, src = m.outputs[k], m.source
    part = slice(first, end)
    (luma_out, contrast_out), (luma_src, contrast_src) = flicker(m, out), flicker(m, src)

    def channels(a: Sequence[tuple], b: Sequence[tuple]) -> tuple[float, float, float]:
        return tuple(_nanmean([x[c] for x in a[part]]) - _nanmean([y[c] for y in b[part]]) for c in range(3))

    return Figures(
        _nanmean(out.psnr[part]), _nanmean(out.ssim[part]), _nanmean(out.psnr_ref[part]),
        _nanmean(out.ssim_ref[part]), _nanmean(out.lpips_ref[part]), _nanmean(out.ewarp[part]),  # a scene's last frame starts no pair: NaN
        _nanmean(m.bicubic.ewarp[part]), _nanmean(luma_out[part]), _nanmean(luma_src[part]),
        _nanmean(contrast_out[part]), _nanmean(contrast_src[part]),
        channels(out.mean, src.mean), channels(out.spread, src.spread))


@dataclass(frozen=True)
class Worst:
    """An output's worst frames: lowest fidelity, least stable, most flicker (beyond the source's)."""

    fidelity: list[int]
    stability: list[int]
    flicker: list[int]

    def frames(self) -> list[int]:
        """Each once, in that order of importance."""
        return list(dict.fromkeys([*self.fidelity, *self.stability, *self.flicker]))


def worst_frames(m: Measurements, k: int, count: int = 3) -> Worst:
    out = m.outputs[k]
    luma_out, _ = flicker(m, out)
    luma_src, _ = flicker(m, m.source)

    def rank(values: Sequence[float], high: bool) -> list[int]:
        kept = [(v, t) for t, v in enumerate(values) if not math.isnan(v)]
        kept.sort(key=lambda p: (-p[0] if high else p[0], p[1]))
        return [t for _, t in kept[:count]]

    excess = [a - b for a, b in zip(luma_out, luma_src)]
    return Worst(rank(out.psnr, high=False), rank(out.ewarp, high=True),
                 [t for t in rank(excess, high=True) if excess[t] > 0])


# -- a crop's numbers (the editor's before/after preview) ------------------------------------------------

@dataclass(frozen=True)
class CropNumbers:
    """A previewed crop's fidelity at its frame, and its stability over the frames around it."""

    psnr: float
    ssim: float  # NaN for a crop under 11x11 source pixels
    ewarp: float  # NaN with a single frame
    ewarp_bicubic: float

    def describe(self) -> str:
        def num(v: float, places: int) -> str:
            return "n/a" if math.isnan(v) else f"{v:.{places}f}"

        return (f"PSNR-LR {num(self.psnr, 2)} dB, SSIM-LR {num(self.ssim, 4)}, E*warp {num(self.ewarp, 3)} "
                f"(bicubic {num(self.ewarp_bicubic, 3)})")


def crop_numbers(source: "torch.Tensor", output: "torch.Tensor", index: int) -> CropNumbers:
    """``source`` (T, 3, h, w) and ``output`` (T, 3, 4h, 4w) in [0, 1], one scene: PSNR-LR and
    SSIM-LR of frame ``index``, E*warp of the output and of a bicubic upscale over the T - 1 pairs,
    along the source's DIS flow, as :func:`measure` computes them."""
    import torch
    import torch.nn.functional as F

    from vs_uav.core.flow import DisFlow
    from vs_uav.core.quality import EWARP_SCALE, SSIM_WINDOW, downscale, psnr, ssim, upscale, visible, warping_error

    with torch.inference_mode():
        small = source.shape[-2:]
        lr = downscale(output[index:index + 1], small)
        fid = float(psnr(lr, source[index:index + 1])[0])
        sim = float(ssim(lr, source[index:index + 1])[0]) if min(small) >= SSIM_WINDOW else math.nan
        if source.shape[0] < 2 or min(small) < MIN_SIDE:
            return CropNumbers(fid, sim, math.nan, math.nan)
        fw, bw = DisFlow(finest_scale=None).bidirectional(source[:-1] * 2 - 1, source[1:] * 2 - 1)
        big = output.shape[-2:]
        mask = F.interpolate(visible(fw, bw), size=big, mode="nearest")

        def warp(frames: "torch.Tensor") -> float:
            return _nanmean((warping_error(frames[:-1], frames[1:], fw, mask) * EWARP_SCALE).tolist())

        return CropNumbers(fid, sim, warp(output.float()), warp(upscale(source, big)))
