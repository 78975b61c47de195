"""Before and after on one frame: a small crop of the source, upscaled by the real pipeline with
the editor's current settings, beside the same crop upscaled bicubically, and, to compare two
settings on the same crop, by another preset's settings (on the same model) beside them. Under
each picture: its fidelity to the source (PSNR-LR, SSIM-LR at the chosen frame) and its
stability over the frames around it (E*warp), as ``uav report`` measures them
(:func:`vs_uav.media.quality.crop_numbers`).

The crop is read like the generated script reads the video (BestSource, then the filter's own
conversion to RGB), given to :class:`vs_uav.engine.pipeline.UpscalePipeline` with a few frames around
the chosen one, and rendered on a background thread that a Cancel (or a newer preview) stops
at the next denoising step. The pipeline comes from the one engine cache
(:func:`vs_uav.engine.cache.engine_for`), as the filter's does, so it is kept between previews.
torch and VapourSynth are imported only when a preview runs.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from PySide6.QtCore import Qt
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (
    QGridLayout,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from vs_uav.settings import UpscaleSettings

from .background import BackgroundJob

logger = logging.getLogger("vs_uav_gui")

SCALE = 4
MIN_CROP = 8  # the model's smallest frame
MAX_CROP = 256
MAX_CONTEXT = 3  # frames on each side: at most 7 frames, within one chunk (chunk_size >= 8)


class Cancelled(Exception):
    """The preview was cancelled (by the user, or by a newer preview)."""


@dataclass(frozen=True)
class PreviewRequest:
    source: Path
    frame: int
    x: int  # the crop's centre, in source pixels
    y: int
    size: int  # the crop's side, in source (low-res) pixels
    settings: UpscaleSettings
    context: int = 1  # frames on each side of ``frame`` that the model sees too
    compare: Optional[UpscaleSettings] = None  # other settings rendered on the same crop, side by side
    compare_name: str = ""


@dataclass(frozen=True)
class PreviewResult:
    before: Any  # (4h, 4w, 3) uint8 RGB: the crop upscaled bicubically
    after: Any  # (4h, 4w, 3) uint8 RGB: the crop upscaled by the model
    box: tuple[int, int, int, int]  # left, top, width, height of the crop in the source
    frames: tuple[int, int]  # the first and last frame the model was given
    seconds: float
    numbers: Any = None  # CropNumbers of "after"
    compared: Any = None  # (H, W, 3) uint8 RGB: the crop upscaled with the compared settings
    compared_numbers: Any = None
    before_numbers: Any = None  # of the bicubic upscale

    def describe(self) -> str:
        left, top, w, h = self.box
        return (f"{w}x{h} at ({left}, {top}) \u2192 {w * SCALE}x{h * SCALE}; frames {self.frames[0]}-"
                f"{self.frames[1]}; {self.seconds:.1f} s")


def crop_box(width: int, height: int, x: int, y: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, w, h): a ``size`` square (smaller when the frame is) centred on (x, y), kept
    inside the frame; sides are even, so that 4:2:0 chroma needs no interpolation across them."""
    if width < MIN_CROP or height < MIN_CROP:
        raise ValueError(f"the source is {width}x{height}; accepted: at least {MIN_CROP}x{MIN_CROP}")
    w, h = (max(MIN_CROP, min(size, side) // 2 * 2) for side in (width, height))
    left = min(max(0, x - w // 2), width - w)
    top = min(max(0, y - h // 2), height - h)
    return left, top, w, h


def check_source(source: Path) -> None:
    """A cheap look at ``source`` before a preview is announced (:func:`vs_uav.media.probe.check_video_file`)."""
    from vs_uav.media.probe import check_video_file

    check_video_file(source)


def read_crop(request: PreviewRequest):
    """The request's frames (the chosen one and its context, within the clip) cropped, as
    (1, 3, T, h, w) in [-1, 1], with the crop box and the first and last frame: BestSource and
    the filter's own conversion to RGB, as under vspipe."""
    try:
        import vapoursynth as vs
    except ImportError as e:
        raise ValueError(f"the preview reads videos with VapourSynth: {e}") from None
    from vs_uav.vsfilter.upscale import chunk_source, to_rgb

    source = request.source
    if not hasattr(vs.core, "bs"):
        raise ValueError("no BestSource to read the video: `pip install vapoursynth-bestsource`")
    if not source.is_file():
        raise ValueError(f"{source}: file not found")
    try:
        clip = vs.core.bs.VideoSource(str(source))
    except vs.Error as e:
        raise ValueError(f"{source}: not a readable video ({e})") from None
    if not 0 <= request.frame < clip.num_frames:
        raise ValueError(f"frame {request.frame}; accepted: 0..{clip.num_frames - 1} ({source.name})")
    first = max(0, request.frame - request.context)
    last = min(clip.num_frames - 1, request.frame + request.context)
    box = crop_box(clip.width, clip.height, request.x, request.y, request.size)
    rgb, _ = to_rgb(clip)
    left, top, w, h = box
    video = chunk_source(vs.core.std.CropAbs(rgb, w, h, left, top))(first, last + 1)[0]
    return video.float(), box, (first, last)


_RUNNING = threading.Lock()  # one preview computes at a time; a newer one waits for the older to stop


def _to_rgb8(frame) -> Any:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return ((frame.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).contiguous().numpy()


def render_preview(request: PreviewRequest, cancelled: Callable[[], bool] = lambda: False,
                   progress: Optional[Callable[[int, int], None]] = None) -> PreviewResult:
    """The chosen frame's crop before (bicubic 4x) and after (the model), with the request's
    settings (and the compared ones), with their numbers. Raises :class:`Cancelled` as soon as
    ``cancelled()`` is true (checked before each stage and at every denoising step), ValueError
    or ModelLoadError (one line) on bad input."""
    import torch
    import torch.nn.functional as F

    from vs_uav.media.quality import crop_numbers

    def check() -> None:
        if cancelled():
            raise Cancelled()

    started = time.monotonic()
    with _RUNNING:
        check()
        video, box, (first, last) = read_crop(request)
        index = request.frame - first
        runs = [request.settings, *([request.compare] if request.compare is not None else [])]
        total = sum(s.steps for s in runs)
        outs, done = [], 0
        for settings in runs:
            offset = done

            def step(n: int, _total: int, *_chunk: int, offset=offset) -> None:
                check()
                if progress is not None:
                    progress(offset + n, total)

            outs.append(_render(video, settings, step, check))
            done += settings.steps
        with torch.inference_mode():
            source = (video[0].transpose(0, 1) + 1) / 2  # (T, 3, h, w) in [0, 1]
            before = F.interpolate(video[:, :, index], scale_factor=SCALE, mode="bicubic", align_corners=False)
            bicubic = F.interpolate(source, scale_factor=SCALE, mode="bicubic", align_corners=False).clamp(0, 1)
            numbers = [crop_numbers(source, (o[0].transpose(0, 1).clamp(-1, 1) + 1) / 2, index) for o in outs]
        return PreviewResult(_to_rgb8(before[0]), _to_rgb8(outs[0][0, :, index]), box, (first, last),
                             time.monotonic() - started, numbers[0],
                             _to_rgb8(outs[1][0, :, index]) if len(outs) > 1 else None,
                             numbers[1] if len(outs) > 1 else None, crop_numbers(source, bicubic, index))


def _render(video, settings: UpscaleSettings, step: Callable, check: Callable[[], None]):
    """The crop through the pipeline the one engine cache holds for ``settings``."""
    import torch

    from vs_uav.engine.cache import engine_for

    pipe, _ = engine_for(settings)  # what uav.Upscale would load
    check()
    settings = settings.replace(cache_dir="", chunk_size=max(settings.chunk_size, video.shape[2]))
    with torch.inference_mode():
        return pipe(video, settings, callback=step).frames


class PreviewJob(BackgroundJob):
    """One preview on a background thread; ``cancel()`` stops it at the next step."""

    stop_types = (Cancelled,)
    what = "preview"

    def __init__(self, request: PreviewRequest, parent=None) -> None:
        super().__init__(parent)
        self.request = request

    def work(self) -> PreviewResult:
        return render_preview(self.request, self.stop.is_set, self.progressed.emit)


def _pixmap(rgb) -> QPixmap:
    h, w, _ = rgb.shape
    return QPixmap.fromImage(QImage(rgb.tobytes(), w, h, 3 * w, QImage.Format.Format_RGB888).copy())


NO_COMPARE = "(nothing)"


class PreviewPanel(QWidget):
    """Frame, crop centre and size, a preset to compare with; Run and Cancel; the images side by
    side, each with its numbers."""

    def __init__(self, request_settings: Callable[[], Optional[UpscaleSettings]], source: Callable[[], str],
                 parent: Optional[QWidget] = None,
                 compare_settings: Optional[Callable[[str], UpscaleSettings]] = None) -> None:
        super().__init__(parent)
        self._settings, self._source = request_settings, source
        self._compare = compare_settings
        self.job: Optional[PreviewJob] = None
        self._jobs: list[PreviewJob] = []  # every job not yet finished, the current one included
        self.result: Optional[PreviewResult] = None

        def spin(name: str, low: int, high: int, value: int, tip: str, step: int = 1) -> QSpinBox:
            s = QSpinBox()
            s.setObjectName(name)
            s.setRange(low, high)
            s.setSingleStep(step)
            s.setValue(value)
            s.setToolTip(tip)
            s.setAccessibleName(tip)
            return s

        self.frame_spin = spin("preview_frame", 0, 0, 0, "The frame to preview")
        self.x_spin = spin("preview_x", 0, 0, 0, "Horizontal centre of the crop, in source pixels")
        self.y_spin = spin("preview_y", 0, 0, 0, "Vertical centre of the crop, in source pixels")
        self.size_spin = spin("preview_size", MIN_CROP, MAX_CROP, 64, "Side of the square crop, in source pixels",
                              step=8)
        self.context_spin = spin("preview_context", 0, MAX_CONTEXT, 1,
                                 "Frames on each side of the chosen one that the model sees too")
        self.compare_combo = QComboBox()
        self.compare_combo.setObjectName("preview_compare")
        self.compare_combo.addItem(NO_COMPARE)
        # As narrow as a spin box: long preset names must not widen the window (they show in the list).
        self.compare_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.compare_combo.setMinimumContentsLength(4)
        self.compare_combo.setToolTip("Render the same crop with another preset's settings (on the form's model) "
                                      "beside the form's, to compare them")
        self.compare_combo.setAccessibleName("Preset to compare with")
        grid = QGridLayout()
        for i, (text, w) in enumerate((("Frame:", self.frame_spin), ("Frames around:", self.context_spin),
                                       ("Crop centre x:", self.x_spin), ("y:", self.y_spin),
                                       ("Crop size:", self.size_spin))):
            label = QLabel(text)
            label.setBuddy(w)
            grid.addWidget(label, i // 2, (i % 2) * 2)
            grid.addWidget(w, i // 2, (i % 2) * 2 + 1)
        compare_label = QLabel("Compare:")
        compare_label.setBuddy(self.compare_combo)
        grid.addWidget(compare_label, 3, 0)
        grid.addWidget(self.compare_combo, 3, 1, 1, 3)  # a row of its own: it never widens a column
        self.run_button = QPushButton("Run previe&w")
        self.run_button.setObjectName("preview_run")
        self.run_button.setToolTip("Upscale the crop with the current settings (Ctrl+R)")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("preview_cancel")
        self.cancel_button.setEnabled(False)
        self.run_button.clicked.connect(lambda: self.start())
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setFormat("step %v/%m")
        self.progress.setValue(0)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.progress, 1)
        self.status = QLabel("Choose a source, a frame and a crop, then run the preview.")
        self.status.setObjectName("preview_status")
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # As wide as the panel, never wider: a long message wraps (a path breaks at its slashes)
        # instead of widening the window or running past its edge; the tooltip has it too.
        self.status.setWordWrap(True)
        self.status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)

        scroll = self._build_images()

        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.addLayout(grid)
        box.addLayout(buttons)
        box.addWidget(self.status)
        box.addWidget(scroll, 1)

    def _build_images(self) -> QScrollArea:
        """Before, after and the compared settings' after, side by side, each with its numbers."""
        self.before_label, self.after_label, self.compared_label = QLabel(), QLabel(), QLabel()
        self.numbers: dict[str, QLabel] = {}
        self.compared_title = QLabel("After (compared)")
        images = QWidget()
        row = QHBoxLayout(images)
        self._compared_column = QWidget()
        for title, label, name in ((QLabel("Before (bicubic 4x)"), self.before_label, "preview_before"),
                                   (QLabel("After (Upscale-A-Video)"), self.after_label, "preview_after"),
                                   (self.compared_title, self.compared_label, "preview_compared")):
            label.setObjectName(name)
            label.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
            numbers = QLabel()
            numbers.setObjectName(f"{name}_numbers")
            numbers.setWordWrap(True)
            numbers.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.numbers[name] = numbers
            holder = self._compared_column if name == "preview_compared" else QWidget()
            column = QVBoxLayout(holder)
            column.setContentsMargins(0, 0, 0, 0)
            column.addWidget(title)
            column.addWidget(label, 1)
            column.addWidget(numbers)
            row.addWidget(holder)
        self._compared_column.hide()
        row.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(images)
        return scroll

    # -- the source ---------------------------------------------------------------------------

    def set_video(self, width: int, height: int, frames: int) -> None:
        """A new source: the ranges follow it; the frame and the crop move to its middle."""
        for s, high, value in ((self.frame_spin, frames - 1, frames // 2), (self.x_spin, width - 1, width // 2),
                               (self.y_spin, height - 1, height // 2)):
            s.setRange(0, max(0, high))
            s.setValue(value)

    def set_presets(self, names: list[str]) -> None:
        """The presets one can compare with (the choice kept when it is still there)."""
        chosen = self.compare_combo.currentText()
        self.compare_combo.blockSignals(True)
        self.compare_combo.clear()
        self.compare_combo.addItems([NO_COMPARE, *names])
        self.compare_combo.setCurrentIndex(max(0, self.compare_combo.findText(chosen)))
        self.compare_combo.blockSignals(False)

    # -- running ------------------------------------------------------------------------------

    def request(self) -> PreviewRequest:
        """The preview the controls describe; ValueError naming what is missing."""
        settings = self._settings()
        if settings is None:
            raise ValueError("the settings have errors; fix the marked fields first")
        source = self._source().strip()
        if not source:
            raise ValueError("choose a source video first")
        name = self.compare_combo.currentText()
        compare = None
        if name != NO_COMPARE and self._compare is not None:
            compare = self._compare(name)  # ValueError naming the preset when it cannot be used
        return PreviewRequest(Path(source).expanduser(), self.frame_spin.value(), self.x_spin.value(),
                              self.y_spin.value(), self.size_spin.value(), settings, self.context_spin.value(),
                              compare, name if compare is not None else "")

    def start(self, request: Optional[PreviewRequest] = None) -> Optional[PreviewJob]:
        """Start a preview (cancelling a running one); the result or error arrives later."""
        try:
            request = request or self.request()
        except ValueError as e:
            self._show_status(str(e), error=True)
            return None
        try:  # before "Rendering ...": an unreadable file is said at once, not after seconds
            check_source(request.source)
        except ValueError as e:
            self._show_status(f"Preview failed: {e}", error=True)
            return None
        if self.job is not None:
            self.job.cancel()
        job = PreviewJob(request, self)
        job.progressed.connect(lambda done, total, j=job: self._on_progress(j, done, total))
        job.succeeded.connect(lambda result, j=job: self._on_success(j, result))
        job.failed.connect(lambda message, j=job: self._on_failure(j, message))
        job.stopped.connect(lambda _said, j=job: self._on_stopped(j))
        job.finished.connect(lambda j=job: self._on_finished(j))
        self.job = job
        self._jobs.append(job)
        self.progress.setRange(0, request.settings.steps + (request.compare.steps if request.compare else 0))
        self.progress.setValue(0)
        self.cancel_button.setEnabled(True)
        self._show_status(f"Rendering frame {request.frame} with {request.settings.steps} step(s)\u2026")
        job.start()
        return job

    def cancel(self) -> None:
        if self.job is not None and self.job.isRunning():
            self.job.cancel()
            self.cancel_button.setEnabled(False)
            self._show_status("Cancelling\u2026")

    def running(self) -> bool:
        return any(j.isRunning() for j in self._jobs)

    def shutdown(self) -> None:
        """Stop every preview and wait for it (the window is closing)."""
        for j in list(self._jobs):
            j.cancel()
        for j in list(self._jobs):
            j.wait()

    def _on_progress(self, job: PreviewJob, done: int, total: int) -> None:
        if job is self.job:
            self.progress.setRange(0, total)
            self.progress.setValue(done)

    def _on_success(self, job: PreviewJob, result: PreviewResult) -> None:
        if job is not self.job:
            return
        self.result = result
        self.before_label.setPixmap(_pixmap(result.before))
        self.after_label.setPixmap(_pixmap(result.after))
        compared = result.compared is not None
        self._compared_column.setVisible(compared)
        if compared:
            self.compared_label.setPixmap(_pixmap(result.compared))
            self.compared_title.setText(f"After ({job.request.compare_name})")
        for name, numbers in (("preview_before", result.before_numbers), ("preview_after", result.numbers),
                              ("preview_compared", result.compared_numbers)):
            self.numbers[name].setText(numbers.describe() if numbers is not None else "")
        self._show_status(f"Frame {job.request.frame}: {result.describe()}")

    def _on_failure(self, job: PreviewJob, message: str) -> None:
        if job is self.job:
            self._show_status(f"Preview failed: {message}", error=True)

    def _on_stopped(self, job: PreviewJob) -> None:
        if job is self.job:
            self._show_status("Preview cancelled")

    def _on_finished(self, job: PreviewJob) -> None:
        if job in self._jobs:
            self._jobs.remove(job)
        if job is self.job:
            self.job = None
            self.cancel_button.setEnabled(False)
        job.deleteLater()

    def _show_status(self, message: str, error: bool = False) -> None:
        self.status.setText(message)
        self.status.setToolTip(message)
        self.status.setStyleSheet("color: #b00020;" if error else "")
        window = self.window()
        if hasattr(window, "statusBar"):  # one line there: elided in the middle, whole in its tooltip
            bar = window.statusBar()
            width = max(100, bar.width() - 24)
            bar.showMessage(bar.fontMetrics().elidedText(message, Qt.TextElideMode.ElideMiddle, width), 10000)
            bar.setToolTip(message)
