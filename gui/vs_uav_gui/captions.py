"""The Captions view: one row per scene (a thumbnail of the frame captioned, its timecode, its
caption, editable), "Caption all" on a background thread with progress and Cancel, and Save,
which writes the captions file and names it in the form's "Captions file" field, so that the
generated script applies it (:func:`vs_uav.apply_captions`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PySide6.QtCore import Qt, QSize
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from vs_uav.app.captions import CaptionJob, read_clip, run_captions
from vs_uav.errors import UavError, one_line
from vs_uav.media.captions import Cancelled, SceneCaption, picture_of, read_captions, rgb24, write_captions
from vs_uav.media.encoder import EncoderSettings
from vs_uav.media.output import absolute
from vs_uav.weights.captioners import CAPTIONERS, DEFAULT_CAPTIONER

from .background import BackgroundJob

logger = logging.getLogger("vs_uav_gui")
THUMB_HEIGHT = 54
COLUMNS = ("Picture", "Frame", "Timecode", "Caption")


def thumbnail(picture: np.ndarray, height: int = THUMB_HEIGHT) -> QImage:
    """An RGB picture (H, W, 3) uint8 as a small QImage (nearest rows and columns: cheap, enough
    to recognise a shot)."""
    h, w = picture.shape[:2]
    width = max(1, round(w * height / h))
    rows = (np.arange(height) * h // height).clip(0, h - 1)
    cols = (np.arange(width) * w // width).clip(0, w - 1)
    small = np.ascontiguousarray(picture[rows][:, cols])
    return QImage(small.data, width, height, 3 * width, QImage.Format.Format_RGB888).copy()


class CaptionsThread(BackgroundJob):
    """With a :class:`CaptionJob`, every scene captioned into its file; then the file read and a
    thumbnail made of each scene's picture. Returns (scenes, thumbnails)."""

    stop_types = (Cancelled,)
    what = "captioning"

    def __init__(self, path: Path, source: Path, job: Optional[CaptionJob] = None, parent=None) -> None:
        super().__init__(parent)
        self.path, self.source, self.job = path, source, job

    def work(self):
        if self.job is not None:
            run_captions(self.job, self.progressed.emit, self.stop)
        scenes = read_captions(self.path)
        clip, _ = read_clip(self.source, self.job.prepare if self.job else ())
        rgb = rgb24(clip)
        images = []
        for s in scenes:
            if self.stop.is_set():
                raise Cancelled("stopped while making the thumbnails")
            n = s.picture if s.picture is not None and s.picture < rgb.num_frames else s.frame
            images.append(thumbnail(picture_of(rgb, min(n, rgb.num_frames - 1))))
        return scenes, images


class CaptionsPanel(QWidget):
    """The Captions tab. ``source()`` is the form's source, ``encoder()`` its encoder settings
    (the scene cuts; None while the form has errors), ``use(path)`` names the saved file in
    the form's "Captions file" field."""

    def __init__(self, source: Callable[[], str], encoder: Callable[[], Optional[EncoderSettings]],
                 use: Callable[[str], None], parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.source, self.encoder, self.use = source, encoder, use
        self.thread: Optional[CaptionsThread] = None
        self.scenes: list[SceneCaption] = []
        box = QVBoxLayout(self)
        path_row, buttons = self._build_rows()
        box.addLayout(path_row)
        box.addLayout(buttons)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setObjectName("captions_table")
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setIconSize(QSize(THUMB_HEIGHT * 2, THUMB_HEIGHT))
        self.table.horizontalHeader().setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setDefaultSectionSize(THUMB_HEIGHT + 6)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked
                                   | QAbstractItemView.EditTrigger.EditKeyPressed
                                   | QAbstractItemView.EditTrigger.AnyKeyPressed)
        box.addWidget(self.table, 1)
        status = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setObjectName("captions_progress")
        self.progress.setFormat("%v/%m scenes")
        self.progress.setRange(0, 1)
        self.status = QLabel("")
        self.status.setObjectName("captions_status")
        self.status.setWordWrap(True)
        self.status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        status.addWidget(self.progress)
        status.addWidget(self.status, 1)
        box.addLayout(status)

    def _build_rows(self) -> tuple[QHBoxLayout, QHBoxLayout]:
        """The file's row, then the captioner and the buttons (two rows: the tab never widens
        the window past a 1280-pixel screen)."""
        row, buttons = QHBoxLayout(), QHBoxLayout()
        label = QLabel("Captions &file:")
        self.path_edit = QLineEdit()
        self.path_edit.setObjectName("captions_path")
        self.path_edit.setPlaceholderText("next to the source: clip.captions.tsv")
        label.setBuddy(self.path_edit)
        self.captioner = QComboBox()
        self.captioner.setObjectName("captioner")
        self.captioner.addItems(list(CAPTIONERS))
        self.captioner.setCurrentText(DEFAULT_CAPTIONER)
        self.captioner.setToolTip("The captioner: `uav download --captioner NAME` fetches it")
        self.caption_button = QPushButton("Caption &all")
        self.caption_button.setObjectName("caption_all")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("cancel_captions")
        self.cancel_button.setEnabled(False)
        self.load_button = QPushButton("&Load")
        self.save_button = QPushButton("Sa&ve captions")
        self.save_button.setObjectName("save_captions")
        self.caption_button.clicked.connect(lambda: self.caption_all())
        self.cancel_button.clicked.connect(self.cancel)
        self.load_button.clicked.connect(lambda: self.load())
        self.save_button.clicked.connect(lambda: self.save())
        for w in (label, self.path_edit, self.load_button, self.save_button):
            row.addWidget(w, 1 if w is self.path_edit else 0)
        for w in (self.captioner, self.caption_button, self.cancel_button):
            buttons.addWidget(w)
        buttons.addStretch(1)
        return row, buttons

    # -- paths ---------------------------------------------------------------------------------

    def path(self) -> Optional[Path]:
        """The captions file: the field's, else next to the source; None without a source."""
        text, source = self.path_edit.text().strip(), self.source().strip()
        if text:
            return absolute(text)
        return absolute(source).with_name(f"{Path(source).stem}.captions.tsv") if source else None

    def show_path(self, path: str) -> None:
        """The form's captions file (a preset or a source chosen): shown, not loaded."""
        if path and self.path_edit.text() != path:
            self.path_edit.setText(path)

    # -- actions -------------------------------------------------------------------------------

    def caption_all(self) -> Optional[CaptionsThread]:
        """Every scene captioned in the background; the rows then show the file."""
        path, source, encoder = self.path(), self.source().strip(), self.encoder()
        if not source or path is None:
            return self._say("choose a source video first", error=True)
        if encoder is None:
            return self._say("the settings have errors: mend them first (the scene cuts come from them)", error=True)
        job = CaptionJob(absolute(source), path, self.captioner.currentText(), scene_cuts=encoder.scene_cuts,
                         scene_threshold=encoder.scene_threshold)
        return self._start(CaptionsThread(path, absolute(source), job, self), f"Captioning the scenes into {path}\u2026")

    def load(self) -> Optional[CaptionsThread]:
        """The captions file read into the rows (with thumbnails), in the background."""
        path, source = self.path(), self.source().strip()
        if not source or path is None:
            return self._say("choose a source video first", error=True)
        return self._start(CaptionsThread(path, absolute(source), None, self), f"Reading {path}\u2026")

    def _start(self, thread: CaptionsThread, message: str) -> Optional[CaptionsThread]:
        if self.running():
            return None
        thread.progressed.connect(self._on_progress)
        thread.succeeded.connect(self._on_loaded)
        thread.failed.connect(lambda text: self._say(text, error=True))
        thread.stopped.connect(lambda text: self._say(f"Captioning cancelled: {text}"))
        thread.finished.connect(self._on_finished)
        self.thread = thread
        for w in (self.caption_button, self.load_button, self.save_button):
            w.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)
        self._say(message)
        thread.start()
        return thread

    def cancel(self) -> None:
        if self.thread is not None:
            self.thread.cancel()
            self.cancel_button.setEnabled(False)
            self._say("Cancelling\u2026")

    def running(self) -> bool:
        return self.thread is not None and self.thread.isRunning()

    def shutdown(self) -> None:
        if self.thread is not None:
            self.thread.cancel()
            self.thread.wait()

    def save(self) -> Optional[Path]:
        """The rows (edited captions) written to the captions file, which the form then names."""
        path = self.path()
        if path is None or not self.scenes:
            self._say("nothing to save: caption the scenes or load a captions file first", error=True)
            return None
        for editor in self.table.viewport().findChildren(QLineEdit):  # a cell still being edited counts
            self.table.commitData(editor)
        rows = [SceneCaption(s.frame, s.timecode, s.picture, self.table.item(i, 3).text())
                for i, s in enumerate(self.scenes)]
        try:
            write_captions(path, rows)
        except OSError as e:
            self._say(f"{path}: cannot be written ({e.strerror or e})", error=True)
            return None
        self.scenes = rows
        self.use(str(path))
        self._say(f"Saved {len(rows)} captions to {path}; the script applies them")
        return path

    # -- results -------------------------------------------------------------------------------

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)

    def _on_loaded(self, result) -> None:
        scenes, images = result
        self.scenes = list(scenes)
        self.table.setRowCount(len(scenes))
        for i, (scene, image) in enumerate(zip(scenes, images)):
            picture = QTableWidgetItem()
            picture.setData(Qt.ItemDataRole.DecorationRole, QPixmap.fromImage(image))
            picture.setToolTip(f"frame {scene.picture if scene.picture is not None else scene.frame}")
            cells = (picture, QTableWidgetItem(str(scene.frame)), QTableWidgetItem(scene.timecode),
                     QTableWidgetItem(scene.caption))
            for column, item in enumerate(cells):
                if column < 3:
                    item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
                self.table.setItem(i, column, item)
        self.table.resizeColumnToContents(0)
        self.progress.setRange(0, max(len(scenes), 1))
        self.progress.setValue(len(scenes))
        self._say(f"{len(scenes)} scenes from {self.path()}: edit a caption (blank: the prompt), then Save")

    def _on_finished(self) -> None:
        self.thread = None
        for w in (self.caption_button, self.load_button, self.save_button):
            w.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)

    def _say(self, message: str, error: bool = False) -> None:
        self.status.setText(one_line(UavError(message)) if "\n" in message else message)
        self.status.setStyleSheet("color: #b00020;" if error else "")
        (logger.warning if error else logger.info)("captions: %s", message)
        return None
