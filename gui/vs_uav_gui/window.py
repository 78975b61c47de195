"""The preset editor window: a form generated from the settings model, live validation,
a live preview of the generated .vpy and its vspipe | ffmpeg command, and a before/after
preview of one frame (:mod:`vs_uav_gui.preview`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from PySide6.QtCore import QSettings, Qt, QThread, Signal
from PySide6.QtGui import QAction, QCloseEvent, QFontDatabase, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from vs_uav.app import presets
from vs_uav.app.plan import RenderPlan, default_output, default_script, plan_preset_render
from vs_uav.app.job import UpscaleJob
from vs_uav.errors import one_line
from vs_uav.app.presets import Preset, PresetError
from vs_uav.media.encoder import ENCODER_SETTINGS, EncoderSettings
from vs_uav.media.probe import not_a_video, probe
from vs_uav.media.script import absolute, reading_script
from vs_uav.settings import SETTINGS, Setting, UpscaleSettings

from .captions import CaptionsPanel
from .preview import PreviewPanel
from .render import RenderBar

logger = logging.getLogger("vs_uav_gui")

ORGANISATION, APPLICATION = "vs-uav", "uav-gui"
SCALE = 4
_INT32 = 2**31 - 1
# "Render on": what the command area shows (the vspipe | ffmpeg command, or uav upscale --cluster)
RENDER_ON = (("this machine", "machine"), ("a local Ray instance", "local"), ("a Ray cluster at", "cluster"))
_GROUP_TITLES = {"prompt": "&Prompt", "diffusion": "&Diffusion", "model": "&Model", "memory": "Memory and &cache",
                 "device": "De&vice", "encoder": "&Encoder"}


def settings_store() -> QSettings:
    """Where geometry and the last choices are kept; $UAV_CONFIG_DIR redirects it (tests)."""
    env = os.environ.get("UAV_CONFIG_DIR")
    if env:
        return QSettings(str(Path(env) / "uav-gui.ini"), QSettings.Format.IniFormat)
    return QSettings(ORGANISATION, APPLICATION)


# -- the source video ----------------------------------------------------------------------------

@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    frames: int
    fps: float

    def describe(self) -> str:
        fps = f"{self.fps:.3f}".rstrip("0").rstrip(".")
        return (f"{self.width}x{self.height}, {self.frames} frames, {fps} fps \u2192 "
                f"output {self.width * SCALE}x{self.height * SCALE}")


def probe_video(path: Path) -> VideoInfo:
    """Size, frame count and rate as the script will see them: the library's one probe
    (:func:`vs_uav.media.probe.probe` on the generated script's reading lines: BestSource, and
    ffprobe for the container; no torch), as ``uav script`` probes. Raises ValueError with the
    reason, in one line."""
    said = not_a_video(path)  # missing or a folder: said without starting ffprobe or BestSource
    if said:
        raise ValueError(said)
    info = probe(path, reading_script(path))
    return VideoInfo(info.width, info.height, info.frames, float(info.fps))


# Probe threads still running, kept alive until they end (a QThread destroyed while it runs aborts).
_RUNNING: set["_ProbeThread"] = set()


class _ProbeThread(QThread):
    """:func:`probe_video` off the UI thread; ``probed``: (token, VideoInfo or None, the reason)."""

    probed = Signal(int, object, str)

    def __init__(self, path: str, token: int) -> None:
        super().__init__()
        self.path, self.token = path, token

    def run(self) -> None:
        try:
            self.probed.emit(self.token, probe_video(Path(self.path)), "")
        except ValueError as e:
            self.probed.emit(self.token, None, str(e))
        except Exception as e:  # noqa: BLE001 - a bug: the label says it, the log has the traceback
            logger.warning("probing %s failed", self.path, exc_info=True)
            self.probed.emit(self.token, None, f"{type(e).__name__}: {one_line(e)}")


# -- one field per setting -----------------------------------------------------------------------

class Field(QWidget):
    """An editor for one Setting: the right widget for its type, and its error label."""

    changed = Signal()

    def __init__(self, spec: Setting, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.spec = spec
        self.editor = self._make_editor(spec)
        self.editor.setObjectName(f"field_{spec.name}")
        self.editor.setToolTip(f"{spec.name}: {spec.help}\nAccepted: {spec.describe_accepted()}. "
                               f"Default: {spec.default!r}.")
        self.editor.setAccessibleName(spec.label or spec.name)
        self.error = QLabel()
        self.error.setObjectName(f"error_{spec.name}")
        self.error.setWordWrap(True)
        self.error.setStyleSheet("color: #b00020;")
        self.error.hide()
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.setSpacing(2)
        box.addWidget(self.editor)
        box.addWidget(self.error)
        self.set_value(spec.default)

    def _make_editor(self, spec: Setting) -> QWidget:
        if spec.type is bool:
            w = QCheckBox()
            w.toggled.connect(self.changed)
        elif spec.choices:
            w = QComboBox()
            w.addItems(list(spec.choices))
            w.currentIndexChanged.connect(self.changed)
        elif spec.type is int and spec.max is not None and spec.max <= _INT32:
            w = QSpinBox()
            w.setRange(int(spec.min), int(spec.max))
            w.setAccelerated(True)
            w.valueChanged.connect(self.changed)
        elif spec.type is float:
            w = QDoubleSpinBox()
            w.setDecimals(2)
            w.setRange(float(spec.min), float(spec.max))
            w.setSingleStep(0.5)
            w.valueChanged.connect(self.changed)
        elif spec.name == "prompt":
            w = QPlainTextEdit()
            w.setTabChangesFocus(True)  # Tab moves on: the form stays keyboard-usable
            w.setFixedHeight(w.fontMetrics().lineSpacing() * 3 + 12)
            w.textChanged.connect(self.changed)
        else:  # str, list and 64-bit int (seed) are typed as text and checked live
            w = QLineEdit()
            if spec.type is list:
                w.setPlaceholderText("none, or e.g. 24, 26, 28")
            w.textChanged.connect(self.changed)
        return w

    def value(self) -> Any:
        """The typed value; ValueError (message like the model's) when it cannot be parsed."""
        w, spec = self.editor, self.spec
        if isinstance(w, QCheckBox):
            return w.isChecked()
        if isinstance(w, QComboBox):
            return w.currentText()
        if isinstance(w, (QSpinBox, QDoubleSpinBox)):
            return w.value()
        text = w.toPlainText() if isinstance(w, QPlainTextEdit) else w.text()
        if spec.type is list:
            parts = [p for p in text.replace(",", " ").split() if p]
            try:
                return [int(p) for p in parts]
            except ValueError:
                raise ValueError(f"{spec.name}={text!r}; accepted: {spec.describe_accepted()}, "
                                 "separated by commas") from None
        if spec.type is int:
            try:
                return int(text.strip())
            except ValueError:
                raise ValueError(f"{spec.name}={text!r}; accepted: {spec.describe_accepted()}") from None
        return text

    def set_value(self, value: Any) -> None:
        w = self.editor
        w.blockSignals(True)  # the window revalidates once, after a whole preset is applied
        try:
            if isinstance(w, QCheckBox):
                w.setChecked(bool(value))
            elif isinstance(w, QComboBox):
                w.setCurrentIndex(w.findText(str(value)))
            elif isinstance(w, (QSpinBox, QDoubleSpinBox)):
                w.setValue(value)
            elif isinstance(w, QPlainTextEdit):
                w.setPlainText(str(value))
            elif self.spec.type is list:
                w.setText(", ".join(str(v) for v in value))
            else:
                w.setText(str(value))
        finally:
            w.blockSignals(False)

    def set_error(self, message: str) -> None:
        self.error.setText(message)
        self.error.setVisible(bool(message))
        self.editor.setStyleSheet("border: 1px solid #b00020;" if message else "")
        self.editor.setAccessibleDescription(message)


# -- the window ----------------------------------------------------------------------------------

def _line_edit_rows(form: QFormLayout, rows: list[tuple[str, str]]) -> list[QLineEdit]:
    """Labelled line edits (label text with its mnemonic, object name), one form row each."""
    edits = []
    for text, name in rows:
        edit = QLineEdit()
        edit.setObjectName(name)
        label = QLabel(text)
        label.setBuddy(edit)
        form.addRow(label, edit)
        edits.append(edit)
    return edits


class PresetEditor(QMainWindow):
    """Pick a source, choose and edit a preset, preview and save the script and command."""

    def __init__(self, store: Optional[QSettings] = None) -> None:
        super().__init__()
        self.store = store if store is not None else settings_store()
        self.fields: dict[str, Field] = {}
        self.current: Optional[Preset] = None  # the valid preset the form shows, else None
        self.loaded: Optional[Preset] = None  # as last loaded or saved: for the unsaved-changes mark
        self.plan_: Optional[RenderPlan] = None
        self.command = ""  # the command shown and copied ("" when none can be generated)
        self.video: Optional[VideoInfo] = None
        self.errors: dict[str, str] = {}  # field name -> reason, as shown next to the field
        self._auto_paths = True  # script/output follow the source until the user edits them
        self._source: Optional[str] = None  # the source shown (probed, or being probed)
        self._probe_token = 0  # the source chosen last (its probe's answer is the one shown)
        self._pending: set[int] = set()  # probes that have not answered yet
        self.setWindowTitle("vs-uav preset editor")
        self._build()
        self._build_actions()
        self.refresh_presets()
        self._restore()

    # -- construction --------------------------------------------------------------------------

    def _build(self) -> None:
        central = QWidget()
        outer = QVBoxLayout(central)
        outer.addLayout(self._build_source_row())
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        outer.addWidget(self.splitter, 1)
        self.splitter.addWidget(self._build_presets())
        self.splitter.addWidget(self._build_form())
        # Beside the script: one frame before and after, rendered with the form's settings.
        self.tabs = QTabWidget()
        self.tabs.addTab(self._build_outputs(), "Script and command")
        self.preview = PreviewPanel(lambda: self.current.settings if self.current else None, self.source_edit.text,
                                    compare_settings=self.compare_settings)
        self.tabs.addTab(self.preview, "Before/&after preview")
        self.captions = CaptionsPanel(self.source_edit.text, lambda: self.current.encoder if self.current else None,
                                      self.use_captions)
        scroll = QScrollArea()  # the tab never sets the window's minimum width
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setWidget(self.captions)
        self.tabs.addTab(scroll, "Ca&ptions")
        self.splitter.addWidget(self.tabs)
        self.splitter.setStretchFactor(0, 2)
        self.splitter.setStretchFactor(1, 4)
        self.splitter.setStretchFactor(2, 5)
        self.setCentralWidget(central)
        self.statusBar()
        self._tab_order()

    def _build_source_row(self) -> QHBoxLayout:
        """The source video: its path, Browse, and what the probe says of it."""
        top = QHBoxLayout()
        src_label = QLabel("&Source:")
        self.source_edit = QLineEdit()
        self.source_edit.setObjectName("source")
        self.source_edit.setPlaceholderText("the video to upscale")
        src_label.setBuddy(self.source_edit)
        self.browse_button = QPushButton("&Browse\u2026")
        self.browse_button.clicked.connect(self.browse_source)
        self.source_edit.editingFinished.connect(lambda: self.set_source(self.source_edit.text()))
        self.video_label = QLabel("no source")
        self.video_label.setObjectName("video_info")
        top.addWidget(src_label)
        top.addWidget(self.source_edit, 1)
        top.addWidget(self.browse_button)
        top.addWidget(self.video_label)
        return top

    def _build_presets(self) -> QWidget:
        """The preset list, the name and description, Save / Duplicate / Delete, and the error line."""
        left = QWidget()
        lv = QVBoxLayout(left)
        lv.setContentsMargins(0, 0, 0, 0)
        list_label = QLabel("P&resets")
        self.preset_list = QListWidget()
        self.preset_list.setObjectName("presets")
        list_label.setBuddy(self.preset_list)
        self.preset_list.currentItemChanged.connect(self._on_preset_selected)
        lv.addWidget(list_label)
        lv.addWidget(self.preset_list, 1)
        name_form = QFormLayout()
        self.name_edit, self.description_edit = _line_edit_rows(
            name_form, [("&Name:", "name"), ("Descr&iption:", "description")])
        self.name_error = QLabel()
        self.name_error.setStyleSheet("color: #b00020;")
        self.name_error.setWordWrap(True)
        self.name_error.hide()
        name_form.addRow(self.name_error)
        lv.addLayout(name_form)
        self.name_edit.textChanged.connect(self.revalidate)
        self.description_edit.textChanged.connect(self.revalidate)
        buttons = QHBoxLayout()
        self.save_button = QPushButton("Sa&ve")
        self.duplicate_button = QPushButton("D&uplicate\u2026")
        self.delete_button = QPushButton("De&lete")
        self.save_button.clicked.connect(lambda: self.save_preset())
        self.duplicate_button.clicked.connect(lambda: self.duplicate_preset())
        self.delete_button.clicked.connect(lambda: self.delete_preset())
        for b in (self.save_button, self.duplicate_button, self.delete_button):
            buttons.addWidget(b)
        lv.addLayout(buttons)
        self.preset_error = QLabel()
        self.preset_error.setObjectName("preset_error")
        self.preset_error.setWordWrap(True)
        self.preset_error.setStyleSheet("color: #b00020;")
        self.preset_error.hide()
        lv.addWidget(self.preset_error)
        return left

    def _build_form(self) -> QScrollArea:
        """The form, generated from the settings model, one group box per group; it scrolls."""
        form_host = QWidget()
        fv = QVBoxLayout(form_host)
        for group in ("prompt", "diffusion", "model", "memory", "device", "encoder"):
            specs = [s for s in (*SETTINGS, *ENCODER_SETTINGS) if s.group == group]
            box = QGroupBox(_GROUP_TITLES[group])
            form = QFormLayout(box)
            form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
            for spec in specs:
                f = Field(spec)
                f.changed.connect(self.revalidate)
                label = QLabel(spec.label or spec.name)  # words; the parameter name is in the tooltip
                label.setObjectName(f"label_{spec.name}")
                label.setBuddy(f.editor)
                label.setToolTip(f"{spec.name}: {spec.help}")
                form.addRow(label, f)
                self.fields[spec.name] = f
            fv.addWidget(box)
        fv.addStretch(1)
        self.form_scroll = QScrollArea()  # the form scrolls: the window fits a 1280x720 screen
        self.form_scroll.setWidgetResizable(True)
        self.form_scroll.setWidget(form_host)
        return self.form_scroll

    def _build_outputs(self) -> QWidget:
        """Script and command, read-only, with where they go, "Render on", Save script and Copy."""
        right = QWidget()
        rv = QVBoxLayout(right)
        rv.setContentsMargins(0, 0, 0, 0)
        paths = QFormLayout()
        self.script_edit, self.output_edit = _line_edit_rows(
            paths, [("Scrip&t file:", "script_path"), ("&Output file:", "output_path")])
        rv.addLayout(paths)
        self.script_edit.textEdited.connect(self._paths_edited)
        self.output_edit.textEdited.connect(self._paths_edited)
        self.script_edit.textChanged.connect(self.update_preview)
        self.output_edit.textChanged.connect(self.update_preview)
        self.source_edit.textChanged.connect(self._source_text_changed)
        self._build_views(rv)
        rv.addLayout(self._build_render_on())
        out_buttons = QHBoxLayout()
        self.save_script_button = QPushButton("Save &script")
        self.copy_button = QPushButton("&Copy command")
        self.save_script_button.clicked.connect(lambda: self.save_script())
        self.copy_button.clicked.connect(self.copy_command)
        out_buttons.addStretch(1)
        out_buttons.addWidget(self.save_script_button)
        out_buttons.addWidget(self.copy_button)
        rv.addLayout(out_buttons)
        self.render_bar = RenderBar(self.make_job)
        rv.addWidget(self.render_bar)
        return right

    def _build_views(self, rv: QVBoxLayout) -> None:
        """The script and command views (monospace, read-only), each under its label."""
        mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        preview_label = QLabel("Script (read-only preview):")
        self.script_view = QPlainTextEdit()
        self.script_view.setObjectName("script_preview")
        self.script_view.setReadOnly(True)
        self.script_view.setFont(mono)
        self.script_view.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.script_view.setTabChangesFocus(True)
        command_label = QLabel("Command:")
        self.command_view = QPlainTextEdit()
        self.command_view.setObjectName("command_preview")
        self.command_view.setReadOnly(True)
        self.command_view.setFont(mono)
        self.command_view.setTabChangesFocus(True)
        self.command_view.setMaximumHeight(mono.pointSize() * 12 if mono.pointSize() > 0 else 140)
        preview_label.setBuddy(self.script_view)
        command_label.setBuddy(self.command_view)
        rv.addWidget(preview_label)
        rv.addWidget(self.script_view, 1)
        rv.addWidget(command_label)
        rv.addWidget(self.command_view)

    def _build_render_on(self) -> QHBoxLayout:
        """"Render on": this machine (the vspipe | ffmpeg command) or Ray (the equivalent
        ``uav upscale ... --cluster`` command)."""
        row = QHBoxLayout()
        label = QLabel("Render on:")
        self.render_on = QComboBox()
        self.render_on.setObjectName("render_on")
        for text, mode in RENDER_ON:
            self.render_on.addItem(text, mode)
        label.setBuddy(self.render_on)
        self.workers_spin = QSpinBox()
        self.workers_spin.setObjectName("cluster_workers")
        self.workers_spin.setRange(0, 1024)
        self.workers_spin.setSpecialValueText("one worker per GPU")  # 0: no --workers
        self.workers_spin.setSuffix(" CPU workers")
        self.workers_spin.setAccessibleName("Workers")
        self.workers_spin.setToolTip("--workers N: N CPU workers; the lowest value: one worker per GPU of the "
                                     "cluster (one CPU worker without GPUs)")
        self.cluster_edit = QLineEdit()
        self.cluster_edit.setObjectName("cluster_address")
        self.cluster_edit.setPlaceholderText("HOST:PORT")
        self.cluster_edit.setAccessibleName("Ray cluster address")
        self.cluster_edit.setToolTip("--cluster HOST:PORT: a running Ray cluster this machine is a node of, or "
                                     "ray://HOST:PORT; the output's folder and the source must be on storage "
                                     "every node sees")
        row.addWidget(label)
        row.addWidget(self.render_on)
        row.addWidget(self.workers_spin)
        row.addWidget(self.cluster_edit, 1)
        self.render_on.currentIndexChanged.connect(self.update_preview)
        self.workers_spin.valueChanged.connect(self.update_preview)
        self.cluster_edit.textChanged.connect(self.update_preview)
        return row

    def cluster_options(self):
        """The "Render on" choice as :class:`vs_uav.app.cluster.ClusterOptions`, None for this
        machine; ValueError (the ``--cluster`` option's one line) for a bad address."""
        from vs_uav.app.cluster import LOCAL, ClusterOptions

        mode = self.render_on.currentData()
        if mode == "machine":
            return None
        workers = self.workers_spin.value() or None
        return ClusterOptions(LOCAL if mode == "local" else self.cluster_edit.text().strip(), workers=workers)

    def _tab_order(self) -> None:
        # Reading order: source, presets, the form top to bottom, paths, preview, buttons.
        chain: list[QWidget] = [self.source_edit, self.browse_button, self.preset_list, self.name_edit,
                                self.description_edit, self.save_button, self.duplicate_button, self.delete_button]
        chain += [f.editor for f in self.fields.values()]
        chain += [self.script_edit, self.output_edit, self.script_view, self.command_view, self.render_on,
                  self.workers_spin, self.cluster_edit, self.save_script_button, self.copy_button,
                  self.render_bar.render_button, self.render_bar.cancel_button]
        for a, b in zip(chain, chain[1:]):
            QWidget.setTabOrder(a, b)

    def _build_actions(self) -> None:
        def action(menu, text: str, slot, shortcut=None) -> QAction:
            a = QAction(text, self)
            if shortcut is not None:
                a.setShortcut(QKeySequence(shortcut))
            a.triggered.connect(lambda checked=False: slot())
            menu.addAction(a)
            return a

        bar = self.menuBar()
        file_menu = bar.addMenu("&File")
        action(file_menu, "&Open source video\u2026", self.browse_source, QKeySequence.StandardKey.Open)
        self.save_script_action = action(file_menu, "&Save script", self.save_script, "Ctrl+E")
        self.copy_action = action(file_menu, "&Copy command", self.copy_command, "Ctrl+Shift+C")
        action(file_menu, "Re&nder", self.render_bar.start, "Ctrl+Shift+R")
        action(file_menu, "Cancel render", self.render_bar.cancel)
        file_menu.addSeparator()
        action(file_menu, "Run &preview", self.run_preview, "Ctrl+R")
        file_menu.addSeparator()
        action(file_menu, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        preset_menu = bar.addMenu("&Preset")
        self.save_action = action(preset_menu, "&Save preset", self.save_preset, QKeySequence.StandardKey.Save)
        self.duplicate_action = action(preset_menu, "&Duplicate preset\u2026", self.duplicate_preset, "Ctrl+D")
        self.delete_action = action(preset_menu, "De&lete preset\u2026", self.delete_preset, "Ctrl+Shift+Del")
        action(preset_menu, "&Import preset file\u2026", self.import_preset, "Ctrl+I")
        preset_menu.addSeparator()
        action(preset_menu, "&Go to the preset list", self.preset_list.setFocus, "Ctrl+L")
        # Delete in the list deletes; elsewhere Delete keeps its text-editing meaning.
        local = QAction(self.preset_list)
        local.setShortcut(QKeySequence(QKeySequence.StandardKey.Delete))
        local.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
        local.triggered.connect(lambda: self.delete_preset())
        self.preset_list.addAction(local)

    # -- presets ------------------------------------------------------------------------------

    def refresh_presets(self, select: Optional[str] = None) -> None:
        select = select or (self.current.name if self.current else None)
        self.preset_list.blockSignals(True)
        self.preset_list.clear()
        for name, (origin, path) in presets.available().items():
            label = name if origin == "shipped" else (
                f"{name}  (yours, replaces shipped)" if presets.is_shipped(name) else f"{name}  (yours)")
            item = QListWidgetItem(label)
            item.setData(Qt.ItemDataRole.UserRole, name)
            item.setToolTip(str(path))
            self.preset_list.addItem(item)
        self.preset_list.blockSignals(False)
        self.preview.set_presets(self.preset_names())
        if select is not None:
            self._select_item(select)

    def _select_item(self, name: str) -> bool:
        for i in range(self.preset_list.count()):
            item = self.preset_list.item(i)
            if item.data(Qt.ItemDataRole.UserRole) == name:
                self.preset_list.setCurrentItem(item)
                return True
        return False

    def compare_settings(self, name: str) -> UpscaleSettings:
        """Preset ``name``'s settings on the form's model and decoder: what the preview compares
        the form's settings with. ValueError (one line) when it cannot be loaded."""
        try:
            settings = presets.load(name).settings
        except PresetError as e:
            raise ValueError(f"compare with {name!r}: {e}") from None
        if self.current is not None:
            settings = settings.replace(model=self.current.settings.model, vae=self.current.settings.vae)
        return settings

    def preset_names(self) -> list[str]:
        return [self.preset_list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.preset_list.count())]

    def select_preset(self, name: str) -> None:
        """Show a preset (by name) in the form; an unknown or broken one leaves the form as it was."""
        if not self._select_item(name):
            self._report(f"unknown preset {name!r}")

    def _on_preset_selected(self, item: Optional[QListWidgetItem], _previous=None) -> None:
        if item is None:
            return
        try:
            preset = presets.load(item.data(Qt.ItemDataRole.UserRole))
        except PresetError as e:
            self._report(str(e))
            return
        self.apply_preset(preset)

    def apply_preset(self, preset: Preset) -> None:
        """Fill the whole form from a valid preset (never part of one)."""
        for table in ("upscale", "encoder"):
            for name, value in preset.values(table).items():
                self.fields[name].set_value(value)
        for edit, text in ((self.name_edit, preset.name), (self.description_edit, preset.description)):
            edit.blockSignals(True)
            edit.setText(text)
            edit.blockSignals(False)
        self.loaded = preset
        self.preset_error.hide()
        self.revalidate()
        self.delete_button.setEnabled(preset.origin == "user")
        self.delete_action.setEnabled(preset.origin == "user")
        self.statusBar().showMessage(f"Preset {preset.name} loaded", 4000)

    def save_preset(self, path: Optional[os.PathLike] = None) -> Optional[Path]:
        """Save the form as a user preset (under the name field) or to ``path``."""
        if self.current is None:
            self._report("the preset has errors; fix the marked fields first")
            return None
        target = presets.save(self.current, path)
        self.loaded = presets.parse(target.read_text(encoding="utf-8"), target, self.current.name,
                                    "user" if path is None else "file")
        self.refresh_presets(select=self.current.name if path is None else None)
        self.delete_button.setEnabled(path is None)
        self.delete_action.setEnabled(path is None)
        self._update_title()
        self.statusBar().showMessage(f"Preset saved to {target}", 6000)
        return target

    def duplicate_preset(self, name: Optional[str] = None) -> Optional[Path]:
        """Save the form's values under a new name (asked for when not given) and select it."""
        if self.current is None:
            self._report("the preset has errors; fix the marked fields first")
            return None
        if name is None:
            name, ok = QInputDialog.getText(self, "Duplicate preset", "&Name of the copy:",
                                            text=f"{self.current.name}-copy")
            if not ok:
                return None
        try:
            presets.check_name(name)
        except PresetError as e:
            self._report(str(e))
            return None
        self.name_edit.setText(name)
        return self.save_preset()

    def delete_preset(self, confirm: bool = True) -> bool:
        item = self.preset_list.currentItem()
        if item is None:
            return False
        name = item.data(Qt.ItemDataRole.UserRole)
        if confirm and QMessageBox.question(self, "Delete preset", f"Delete your preset \u201c{name}\u201d?") \
                != QMessageBox.StandardButton.Yes:
            return False
        try:
            presets.delete(name)
        except PresetError as e:
            self._report(str(e))
            return False
        self.refresh_presets(select=name if presets.is_shipped(name) else None)
        if self.preset_list.currentItem() is None and self.preset_list.count():
            self.preset_list.setCurrentRow(0)
        self.statusBar().showMessage(f"Preset {name} deleted", 4000)
        return True

    def import_preset(self, path: Optional[os.PathLike] = None) -> bool:
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Import preset", str(presets.user_dir()),
                                                  "Presets (*.toml)")
            if not path:
                return False
        try:
            preset = presets.load(Path(path))
        except PresetError as e:
            self._report(str(e))
            return False
        self.apply_preset(preset)
        return True

    # -- validation and preview ------------------------------------------------------------------

    def revalidate(self) -> None:
        """Check every field, then the settings as a whole; show each reason next to its field."""
        errors: dict[str, str] = {}
        values: dict[str, dict[str, Any]] = {"upscale": {}, "encoder": {}}
        for table, specs in (("upscale", SETTINGS), ("encoder", ENCODER_SETTINGS)):
            for spec in specs:
                try:
                    values[table][spec.name] = spec.check(self.fields[spec.name].value())
                except ValueError as e:
                    errors[spec.name] = str(e)
        built: dict[str, Any] = {}
        for table, cls in (("upscale", UpscaleSettings), ("encoder", EncoderSettings)):
            if not any(s.name in errors for s in (SETTINGS if table == "upscale" else ENCODER_SETTINGS)):
                try:
                    built[table] = cls(**values[table])
                except ValueError as e:  # cross-field: the message starts with the field it blames
                    name = str(e).split("=", 1)[0]
                    errors[name if name in self.fields else next(iter(values[table]))] = str(e)
        self.errors = errors
        for name, f in self.fields.items():
            f.set_error(errors.get(name, ""))
        name_error = ""
        try:
            presets.check_name(self.name_edit.text())
        except PresetError as e:
            name_error = str(e)
        self.name_error.setText(name_error)
        self.name_error.setVisible(bool(name_error))
        if errors or name_error:
            self.current = None
        else:
            self.current = Preset(self.name_edit.text(), built["upscale"], built["encoder"],
                                  self.description_edit.text())
        for w in (self.save_button, self.save_action, self.duplicate_button, self.duplicate_action):
            w.setEnabled(self.current is not None)
        self.update_preview()
        self._update_title()

    def use_captions(self, path: str) -> None:
        """The Captions view saved ``path``: the form's captions file, so the script applies it."""
        self.fields["captions"].set_value(path)
        self.revalidate()

    def update_preview(self) -> None:
        source = self.source_edit.text().strip()
        mode = self.render_on.currentData()
        self.workers_spin.setVisible(mode != "machine")
        self.cluster_edit.setVisible(mode == "cluster")
        self.command = ""
        if self.current is None:
            self.plan_ = None
            first = next(iter(self.errors.values()), "") or self.name_error.text()
            self.script_view.setPlainText(f"# Not generated: the settings have errors.\n# {first}")
            self.command_view.setPlainText("")
        else:
            # Absolute, like everything the script and its command name: they run from anywhere.
            src = absolute(source or "input.mp4")
            if self._auto_paths:
                self._set_paths(default_script(src), default_output(src, self.current.encoder))
            script = Path(self.script_edit.text() or default_script(src))
            output = Path(self.output_edit.text() or default_output(src, self.current.encoder))
            self.plan_ = plan_preset_render(self.current, src, script, output)
            self._set_text(self.script_view, self.plan_.script)
            try:
                self.command = self._render_command(src, output)
                self._set_text(self.command_view, self.command)
            except ValueError as e:  # the address field: what --cluster accepts
                self._set_text(self.command_view, f"# Not generated: {e}")
        ready = self.plan_ is not None and bool(source)
        for w in (self.save_script_button, self.save_script_action):
            w.setEnabled(ready)
        for w in (self.copy_button, self.copy_action):
            w.setEnabled(ready and bool(self.command))
        self.render_bar.set_ready(ready and bool(self.command))

    def make_job(self) -> UpscaleJob:
        """The job the form describes, as ``uav upscale`` would run it (the source, the preset's
        settings and encoder, the output, "Render on"); JobError or ValueError in one line."""
        source = self.source_edit.text().strip()
        if self.current is None:
            raise ValueError("the settings have errors: " + (next(iter(self.errors.values()), "")
                                                             or self.name_error.text()))
        if not source:
            raise ValueError("choose a source video first")
        output = self.output_edit.text().strip() or None
        return UpscaleJob.create(Path(source), self.current.settings, self.current.encoder, output,
                                 cluster=self.cluster_options())

    def _render_command(self, source: Path, output: Path) -> str:
        """The command "Render on" asks for: the plan's vspipe | ffmpeg command, or the
        ``uav upscale`` command rendering the same frames on Ray (from the loaded preset and the
        values changed since, so it stays short)."""
        from vs_uav.app.job import upscale_command

        assert self.current is not None and self.plan_ is not None
        cluster = self.cluster_options()
        if cluster is None:
            return self.plan_.command
        base = self.loaded if self.loaded is not None and self.loaded.origin in ("shipped", "user") else None
        if base is not None and presets.available().get(base.name, ("", None))[0] != base.origin:
            base = None  # no longer what its name loads
        return upscale_command(self.current, source, output, cluster, base)

    @staticmethod
    def _set_text(view: QPlainTextEdit, text: str) -> None:
        if view.toPlainText() != text:  # keeps the scroll position while typing
            bar = view.verticalScrollBar().value()
            view.setPlainText(text)
            view.verticalScrollBar().setValue(bar)

    def _set_paths(self, script: Path, output: Path) -> None:
        for edit, p in ((self.script_edit, script), (self.output_edit, output)):
            if edit.text() != str(p):
                edit.blockSignals(True)
                edit.setText(str(p))
                edit.blockSignals(False)

    def _paths_edited(self, _text: str = "") -> None:
        self._auto_paths = False

    def _source_text_changed(self, _text: str) -> None:
        self._auto_paths = True
        self.update_preview()

    def _update_title(self) -> None:
        name = self.name_edit.text() or "untitled"
        dirty = self.current is None or self.loaded is None or self.current != self.loaded
        self.setWindowTitle(f"{name}{'*' if dirty else ''} \u2014 vs-uav preset editor")

    # -- source and outputs -------------------------------------------------------------------------

    def browse_source(self) -> None:
        start = str(Path(self.source_edit.text()).parent) if self.source_edit.text() else str(Path.home())
        path, _ = QFileDialog.getOpenFileName(self, "Source video", start,
                                              "Videos (*.mp4 *.mkv *.mov *.avi *.webm *.m2ts *.ts *.mpg);;All (*)")
        if path:
            self.set_source(path)

    def set_source(self, path: os.PathLike | str) -> None:
        """Show ``path`` as the source; its probe runs on a background thread (BestSource may
        index a long file), and what it says replaces "Reading..." unless another source was
        chosen meanwhile. A missing file or a folder is said at once."""
        path = str(path)
        if self.source_edit.text() != path:
            self.source_edit.setText(path)
        if path == self._source:
            return  # the field lost focus unchanged (editingFinished): nothing to probe again
        self._source, self.video = path, None
        self._probe_token += 1  # what a probe of an earlier choice says is not shown
        said = "no source" if not path else not_a_video(Path(path))
        if said:
            self.video_label.setText(said)
            return
        self.video_label.setText(f"Reading {Path(path).name}\u2026")
        thread = _ProbeThread(path, self._probe_token)  # no parent: never destroyed with a window while it runs
        thread.probed.connect(self._on_probed)  # both delivered on the UI thread, in this order
        thread.finished.connect(self._probe_finished)
        self._pending.add(self._probe_token)
        _RUNNING.add(thread)
        thread.start()

    def probing(self) -> bool:
        """Whether a source's probe has not answered yet."""
        return bool(self._pending)

    def _on_probed(self, token: int, video: Optional[VideoInfo], said: str) -> None:
        self._pending.discard(token)
        if token != self._probe_token:
            return  # another source was chosen meanwhile
        self.video = video
        self.video_label.setText(video.describe() if video is not None else said)
        if video is not None:
            self.preview.set_video(video.width, video.height, video.frames)

    def _probe_finished(self) -> None:
        _RUNNING.discard(self.sender())

    def run_preview(self) -> None:
        """Show the preview tab and render the chosen crop with the form's settings."""
        self.tabs.setCurrentWidget(self.preview)
        self.preview.start()

    def save_script(self, path: Optional[os.PathLike] = None) -> Optional[Path]:
        """Write the previewed script (to the script path field, or ``path``)."""
        if self.plan_ is None or not self.source_edit.text().strip():
            self._report("choose a source and fix the marked fields first")
            return None
        if path is not None:
            self._auto_paths = False  # before setText: its preview update must keep this path
            self.script_edit.setText(str(path))
        target = self.plan_.script_path
        try:
            self.plan_.write()  # the script and any file its command reads
        except OSError as e:
            self._report(f"{target}: cannot be written: {e}")
            return None
        self.statusBar().showMessage(f"Script written to {target}", 6000)
        return target

    def copy_command(self) -> None:
        if self.plan_ is None or not self.command:
            return
        QGuiApplication.clipboard().setText(self.command)
        self.statusBar().showMessage("Command copied to the clipboard", 4000)

    def _report(self, message: str) -> None:
        logger.warning("%s", message)
        self.preset_error.setText(message)
        self.preset_error.show()
        self.statusBar().showMessage(message, 10000)

    # -- remembered state -----------------------------------------------------------------------------

    def _restore(self) -> None:
        geometry, state = self.store.value("geometry"), self.store.value("windowState")
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            screen = self.screen().availableGeometry()  # fits a 1280x720 screen, title bar included
            self.resize(min(1440, screen.width() - 20), min(900, screen.height() - 60))
        if state is not None:
            self.restoreState(state)
        splitter = self.store.value("splitter")
        if splitter is not None:
            self.splitter.restoreState(splitter)
        last = self.store.value("preset")
        if not (isinstance(last, str) and self._select_item(last)) and self.preset_list.count():
            self.preset_list.setCurrentRow(0)
        source = self.store.value("source")
        if isinstance(source, str) and source:
            self.set_source(source)

    def save_state(self) -> None:
        self.store.setValue("geometry", self.saveGeometry())
        self.store.setValue("windowState", self.saveState())
        self.store.setValue("splitter", self.splitter.saveState())
        item = self.preset_list.currentItem()
        if item is not None:
            self.store.setValue("preset", item.data(Qt.ItemDataRole.UserRole))
        self.store.setValue("source", self.source_edit.text())
        self.store.sync()

    def closeEvent(self, event: QCloseEvent) -> None:
        self.preview.shutdown()
        self.render_bar.shutdown()
        self.captions.shutdown()
        for thread in list(_RUNNING):
            thread.wait()
        self.save_state()
        super().closeEvent(event)


def no_display(environ: Optional[dict] = None) -> str:
    """One line when Qt has no screen to open a window on (a Linux machine without X11 or
    Wayland and no other Qt platform asked for), else ""."""
    env = os.environ if environ is None else environ
    if not sys.platform.startswith("linux") or env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"):
        return ""
    platform = env.get("QT_QPA_PLATFORM", "")
    if platform and not platform.startswith(("xcb", "wayland")):
        return ""  # offscreen, vnc, eglfs, linuxfb ...: Qt needs no display server
    return ("no display: DISPLAY and WAYLAND_DISPLAY are unset; accepted: a desktop session, `xvfb-run uav-gui` on "
            "a server, or QT_QPA_PLATFORM=offscreen (no window is shown); rendering needs no display: uav upscale")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="uav-gui", description="vs-uav preset editor")
    parser.add_argument("source", nargs="?", help="source video to open")
    parser.add_argument("--preset", metavar="NAME", help="preset to select")
    args, qt_args = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    said = no_display()
    if said and QApplication.instance() is None:  # Qt would abort (exit 134) with a page of its own
        print(f"uav-gui: {said}", file=sys.stderr)
        return 2
    app = QApplication.instance() or QApplication(["uav-gui", *qt_args])
    app.setOrganizationName(ORGANISATION)
    app.setApplicationName(APPLICATION)
    window = PresetEditor()
    if args.preset:
        window.select_preset(args.preset)
    if args.source:
        window.set_source(args.source)
    window.show()
    return app.exec()
