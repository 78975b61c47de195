"""Render from the editor: the form's job (:class:`vs_uav.app.job.UpscaleJob`, the one the CLI's
``uav upscale`` and the cluster run) run by :func:`vs_uav.app.job.run_job` on a background
thread, with its progress, its warnings, Cancel (the job's stop event: vspipe, ffmpeg or the
Ray workers end, the finished chunks or segments stay for a resume) and its one-line outcome.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Optional

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QMessageBox, QProgressBar, QPushButton, QSizePolicy, QWidget

from vs_uav.app.job import JobEvents, JobResult, JobStopped, UpscaleJob, output_taken, run_job
from vs_uav.errors import UavError, one_line

from .background import BackgroundJob

logger = logging.getLogger("vs_uav_gui")


class _Events(JobEvents):
    """The job's events as the thread's signals (emitted from the job's thread, delivered on the UI's)."""

    def __init__(self, thread: "JobThread") -> None:
        self.thread = thread

    def started(self, frames: int) -> None:
        self.thread.progressed.emit(0, frames)

    def frames(self, done: int, total: int) -> None:
        self.thread.progressed.emit(done, total)

    def cluster(self, state: Any) -> None:
        self.thread.progressed.emit(state.done, state.total)

    def warning(self, text: str) -> None:
        self.thread.warned.emit(text)

    def note(self, text: str) -> None:
        self.thread.warned.emit(text)


class JobThread(BackgroundJob):
    """One :func:`run_job` on a background thread; ``cancel()`` sets the job's stop event."""

    warned = Signal(str)
    stop_types = (JobStopped,)
    what = "render"

    def __init__(self, job: UpscaleJob, parent=None) -> None:
        super().__init__(parent)
        self.job = job

    def work(self) -> JobResult:
        return run_job(self.job, _Events(self), self.stop)


class RenderBar(QWidget):
    """Render and Cancel, the frames written, and what the last render said."""

    def __init__(self, make_job: Callable[[], UpscaleJob], parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.make_job = make_job
        self.job: Optional[JobThread] = None
        self.result: Optional[JobResult] = None
        self.warnings: list[str] = []
        self.ready = True  # the form can make a job (a source, valid settings)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.render_button = QPushButton("&Render")
        self.render_button.setObjectName("render")
        self.render_button.setToolTip("Render the output with these settings (what the command above does)")
        self.cancel_button = QPushButton("Cancel render")
        self.cancel_button.setObjectName("cancel_render")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setObjectName("render_progress")
        self.progress.setFormat("")  # no render yet
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("")
        self.status.setObjectName("render_status")
        self.status.setWordWrap(True)
        # Long lines wrap within whatever width the window has: the bar never widens the window.
        self.status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.progress.setMinimumWidth(60)
        for w in (self.render_button, self.cancel_button, self.progress):
            row.addWidget(w)
        row.addWidget(self.status, 1)
        self.render_button.clicked.connect(lambda: self.start())
        # Asked before a file already at the output is replaced (a test may answer for the user).
        self.confirm_overwrite: Callable[[Path], bool] = self._ask_overwrite
        self.cancel_button.clicked.connect(self.cancel)

    def start(self) -> Optional[JobThread]:
        """The form's job started; None (and the reason shown) when it cannot be made, or one runs."""
        if self.running():
            return None
        try:
            job = self.make_job()
        except (UavError, ValueError) as e:
            self._show(one_line(e), error=True)
            return None
        if output_taken(job.output) and not job.overwrite:  # never replaced without a word
            if not self.confirm_overwrite(job.output):
                self._show(f"Not rendered: {job.output} is there already (not replaced)", error=True)
                return None
            job = dataclasses.replace(job, overwrite=True)
        thread = JobThread(job, self)
        thread.progressed.connect(self._on_progress)
        thread.warned.connect(self._on_warning)
        thread.succeeded.connect(self._on_success)
        thread.failed.connect(lambda message: self._show(message, error=True))
        thread.stopped.connect(lambda message: self._show(f"Render cancelled: {message}"))
        thread.finished.connect(self._on_finished)
        self.job, self.result, self.warnings = thread, None, []
        self.render_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)  # busy until the probe says how many frames
        self.progress.setFormat("%v/%m frames")
        self._show(f"Rendering {job.output}\u2026")
        thread.start()
        return thread

    def _ask_overwrite(self, output: Path) -> bool:
        answer = QMessageBox.question(self, "Replace the output?", f"{output} is there already.\n\nReplace it once "
                                      "the render is complete?", QMessageBox.StandardButton.Yes |
                                      QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def set_ready(self, ready: bool) -> None:
        self.ready = ready
        self.render_button.setEnabled(ready and not self.running())

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.cancel_button.setEnabled(False)
            self._show("Cancelling\u2026")

    def running(self) -> bool:
        return self.job is not None and self.job.isRunning()

    def shutdown(self) -> None:
        """Cancel and wait (the window closes): no vspipe, ffmpeg or worker outlives the editor."""
        if self.job is not None:
            self.job.cancel()
            self.job.wait()

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)

    def _on_warning(self, text: str) -> None:
        self.warnings.append(text)
        self._show(text)

    def _on_success(self, result: JobResult) -> None:
        self.result = result
        self.progress.setValue(self.progress.maximum())
        said = f"Wrote {result.output} in {result.seconds:.0f} s"
        self._show(f"{said}: {result.summary}" if result.summary else said)

    def _on_finished(self) -> None:
        self.job = None
        self.render_button.setEnabled(self.ready)
        self.cancel_button.setEnabled(False)
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)

    def _show(self, message: str, error: bool = False) -> None:
        self.status.setText(message)
        self.status.setStyleSheet("color: #b00020;" if error else "")
        (logger.warning if error else logger.info)("render: %s", message)
