"""The preset editor, driven like a user would (pytest-qt, real widgets, offscreen)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

from conftest import MODEL_DIR  # noqa: E402
from PySide6.QtCore import QSettings, Qt  # noqa: E402
from PySide6.QtGui import QGuiApplication  # noqa: E402
from PySide6.QtWidgets import QApplication, QLabel  # noqa: E402
from vs_uav_gui.preview import render_preview  # noqa: E402
from vs_uav_gui.window import PresetEditor  # noqa: E402

from vs_uav.app import presets
from vs_uav.engine.cache import ENGINES  # noqa: E402
from vs_uav.errors import UavError
from vs_uav.media.encoder import ENCODER_SETTINGS
from vs_uav.settings import SETTINGS
from vs_uav.weights.folder import ModelLoadError

VIDEOS = Path(__file__).resolve().parent.parent.parent / "shared" / "videos"
ANIMATION = VIDEOS / "old_animation_1.mp4"


@pytest.fixture
def config(tmp_path, monkeypatch) -> Path:
    # Presets and QSettings both go to the temporary folder, never to the real user config.
    monkeypatch.setenv("UAV_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path / "config"


@pytest.fixture
def window(qtbot, config) -> PresetEditor:
    w = PresetEditor()
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    return w


def open_source(window: PresetEditor, path: Path) -> None:
    """Choose ``path`` as the source and wait for its probe (a background thread)."""
    import time

    window.set_source(path)
    deadline = time.monotonic() + 60
    while window.probing() and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.01)
    QApplication.processEvents()  # the last answer's signals
    assert not window.probing()


def type_into(qtbot, widget, text: str) -> None:
    widget.setFocus()
    widget.selectAll()
    qtbot.keyClick(widget, Qt.Key.Key_Delete)
    qtbot.keyClicks(widget, text)


def test_choose_a_preset_and_see_the_script_and_command(window):
    open_source(window, ANIMATION)
    assert window.video_label.text().startswith("320x240, ") and "output 1280x960" in window.video_label.text()
    window.select_preset("archival-lossless")
    assert window.fields["codec"].editor.currentText() == "ffv1"
    assert window.fields["vae"].editor.currentText() == "video"
    script, command = window.script_view.toPlainText(), window.command_view.toPlainText()
    assert "core.uav.Upscale(" in script and "vae='video'," in script and f"{str(ANIMATION)!r}" in script
    assert command.startswith("vspipe -c y4m ") and "-c:v ffv1" in command and "-map '1:a?'" in command
    assert window.windowTitle().startswith("archival-lossless \u2014")  # no unsaved-changes mark


def test_changing_values_updates_the_preview_live(window, qtbot):
    open_source(window, ANIMATION)
    window.select_preset("old-film")
    type_into(qtbot, window.fields["noise_level"].editor, "135")
    assert "noise_level=135," in window.script_view.toPlainText()
    type_into(qtbot, window.fields["prompt"].editor, "a silent film")
    assert "prompt='a silent film'," in window.script_view.toPlainText()
    window.fields["codec"].editor.setCurrentText("prores")
    assert "-c:v prores_ks" in window.command_view.toPlainText()
    assert window.output_edit.text().endswith(".uav.mov")  # the container follows the codec
    assert window.windowTitle().startswith("old-film*")


def test_save_a_preset_and_reload_it_identically(window, qtbot, config):
    window.select_preset("ai-generated")
    type_into(qtbot, window.name_edit, "my film")
    type_into(qtbot, window.fields["steps"].editor, "29")
    type_into(qtbot, window.fields["propagation_steps"].editor, "20, 24")
    window.fields["color_fix"].editor.setCurrentText("adain")
    window.fields["scene_change"].editor.setChecked(False)
    type_into(qtbot, window.fields["seed"].editor, "12345678901")
    edited = window.current
    assert edited is not None
    qtbot.keyClick(window, Qt.Key.Key_S, Qt.KeyboardModifier.ControlModifier)  # File > Save preset
    path = config / "presets" / "my film.toml"
    assert path.is_file()
    assert presets.load("my film") == edited
    assert "my film" in window.preset_names()
    window.select_preset("old-film")
    assert window.current.name == "old-film"
    window.select_preset("my film")
    assert window.current == edited
    assert window.fields["seed"].value() == 12345678901 and window.fields["propagation_steps"].value() == [20, 24]
    assert not window.windowTitle().startswith("my film*")


def test_an_invalid_value_shows_the_reason_next_to_the_field(window, qtbot):
    open_source(window, ANIMATION)
    window.select_preset("ai-generated")
    field = window.fields["propagation_steps"]
    type_into(qtbot, field.editor, "24, 26, 40")
    assert field.error.isVisible()
    with pytest.raises(ValueError) as refused:  # the settings model's own message, shown as it is
        presets.load("ai-generated").settings.replace(propagation_steps=[24, 26, 40])
    assert str(refused.value).startswith("propagation_steps=[24, 26, 40]; accepted: ")
    assert field.error.text() == str(refused.value)
    assert not window.save_button.isEnabled() and not window.save_script_button.isEnabled()
    assert window.script_view.toPlainText().startswith("# Not generated")
    type_into(qtbot, field.editor, "24, x")
    assert field.error.text() == (f"propagation_steps='24, x'; accepted: {field.spec.describe_accepted()}, "
                                  "separated by commas")
    type_into(qtbot, window.fields["tile_size"].editor, "100")
    type_into(qtbot, field.editor, "24")  # the list is fine now; tile_size is not
    assert not field.error.isVisible()
    assert window.fields["tile_size"].error.text().startswith("tile_size=100; accepted: 0 (automatic) or a multiple")
    type_into(qtbot, window.fields["tile_size"].editor, "128")
    assert window.save_button.isEnabled() and "tile_size=128," in window.script_view.toPlainText()
    type_into(qtbot, window.name_edit, "a/b")
    assert window.name_error.isVisible() and not window.save_button.isEnabled()


def test_a_broken_preset_file_is_reported_and_not_half_applied(window, config):
    window.select_preset("fast-preview")
    before = window.current
    (config / "presets").mkdir(parents=True)
    broken = config / "presets" / "broken.toml"
    broken.write_text('schema_version = 1\n[upscale]\nsteps = 25\nnoise_level = 999\n[encoder]\ncodec = "ffv1"\n')
    window.refresh_presets()
    window.select_preset("broken")
    assert window.preset_error.isVisible()
    assert window.preset_error.text() == f"{broken}: upscale.noise_level=999; accepted: an integer in [0, 350]"
    assert window.current == before  # nothing of it applied, not even steps or codec


def test_duplicate_delete_and_import(window, config, tmp_path):
    window.select_preset("animation")
    window.duplicate_preset("animation 2")
    assert presets.load("animation 2").settings == presets.load("animation").settings
    assert window.preset_list.currentItem().data(Qt.ItemDataRole.UserRole) == "animation 2"
    assert window.delete_preset(confirm=False)
    assert "animation 2" not in presets.available()
    old = tmp_path / "legacy.toml"
    old.write_text('schema_version = 0\n[upscale]\nguidance = 8.0\n[encoder]\npreset = "fast"\n')
    assert window.import_preset(old)
    assert window.fields["guidance_scale"].value() == 8.0 and window.fields["speed"].value() == "fast"


def test_save_script_and_copy_command(window, qtbot, tmp_path):
    open_source(window, ANIMATION)
    window.select_preset("fast-preview")
    target = tmp_path / "out dir" / "l'été.vpy"
    written = window.save_script(target)
    assert written == target and target.read_text(encoding="utf-8") == window.script_view.toPlainText()
    assert f"'{tmp_path}/out dir/l'\"'\"'été.vpy'" in window.command_view.toPlainText()
    window.copy_button.click()
    assert QGuiApplication.clipboard().text() == window.command_view.toPlainText()


def test_keyboard_and_remembered_geometry(qtbot, config):
    w = PresetEditor()
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    w.activateWindow()
    qtbot.waitUntil(w.isActiveWindow)  # shortcuts go to the active window
    # Every form field can be reached with Tab and has a labelled buddy.
    chain, widget = [], w.source_edit
    for _ in range(200):
        chain.append(widget)
        widget = widget.nextInFocusChain()
    assert all(f.editor in chain for f in w.fields.values())
    assert chain.index(w.preset_list) < chain.index(w.fields["prompt"].editor) < chain.index(w.copy_button)
    qtbot.keyClick(w, Qt.Key.Key_L, Qt.KeyboardModifier.ControlModifier)
    assert w.focusWidget() is w.preset_list
    w.select_preset("old-film")
    w.resize(640, 480)  # within the offscreen screen (800x600)
    open_source(w, ANIMATION)
    w.close()
    store = QSettings(str(config / "uav-gui.ini"), QSettings.Format.IniFormat)
    assert store.value("preset") == "old-film"
    again = PresetEditor()
    qtbot.addWidget(again)
    assert (again.width(), again.height()) == (640, 480)
    assert again.current.name == "old-film" and again.source_edit.text() == str(ANIMATION)


def test_the_window_fits_a_1280x720_screen_and_every_row_is_reachable(window, qtbot):
    # A 1280x720 screen less the title bar and a panel: the window can be that small ...
    hint, minimum = window.sizeHint(), window.minimumSizeHint()
    assert hint.width() <= 1260 and hint.height() <= 680, hint
    assert minimum.width() <= 1260 and minimum.height() <= 680, minimum
    screen = window.screen().availableGeometry()  # ... and opens within the screen it is on
    assert window.width() <= screen.width() and window.height() <= screen.height()
    window.resize(1260, 680)
    qtbot.waitUntil(lambda: window.width() == 1260)
    scroll = window.form_scroll
    assert scroll.widget().height() > scroll.viewport().height()  # the form does not fit: it scrolls
    for name, f in window.fields.items():  # scrolled to, each editor is wholly in view
        centre = f.editor.mapTo(scroll.widget(), f.editor.rect().center())
        scroll.ensureVisible(centre.x(), centre.y(), f.editor.width() // 2 + 2, f.editor.height() // 2 + 2)
        top_left = f.editor.mapTo(scroll.viewport(), f.editor.rect().topLeft())
        bottom_right = f.editor.mapTo(scroll.viewport(), f.editor.rect().bottomRight())
        assert scroll.viewport().rect().contains(top_left) and scroll.viewport().rect().contains(bottom_right), name


def test_every_setting_has_a_label_in_words_and_the_form_shows_it(window):
    for spec in (*SETTINGS, *ENCODER_SETTINGS):
        assert spec.label and spec.label != spec.name and "_" not in spec.label, spec.name
        label = window.findChild(QLabel, f"label_{spec.name}")
        assert label.text() == spec.label and label.buddy() is window.fields[spec.name].editor
        assert label.toolTip().startswith(f"{spec.name}: ")  # the parameter name stays at hand
        assert window.fields[spec.name].editor.toolTip().startswith(f"{spec.name}: {spec.help}")
    assert window.findChild(QLabel, "label_w_lr").text() == "Low-res weight (video VAE)"


# -- the before/after preview: the real pipeline on the tiny reference model ----------------------

@pytest.fixture
def previewing(window):
    """The editor on a real video with the tiny model and one step, crop 32x32."""
    open_source(window, ANIMATION)
    window.select_preset("fast-preview")
    window.fields["model"].editor.setText(str(MODEL_DIR))
    window.fields["propagation_steps"].editor.setText("")
    window.fields["steps"].editor.setValue(1)
    size = window.preview.size_spin
    assert (size.value(), size.minimum(), size.maximum()) == (64, 8, 256)  # as the README says
    size.setValue(32)
    assert window.current is not None, window.errors
    return window


def _finished(panel) -> bool:
    return panel.job is None and not panel.running()


def test_preview_shows_the_crop_before_and_after(previewing, qtbot):
    import cv2
    import numpy as np

    panel = previewing.preview
    # The source's size sets the ranges; the frame and the crop start in its middle.
    assert (panel.frame_spin.maximum(), panel.x_spin.maximum(), panel.y_spin.maximum()) == (70, 319, 239)
    assert (panel.frame_spin.value(), panel.x_spin.value(), panel.y_spin.value()) == (35, 160, 120)
    panel.frame_spin.setValue(10)
    qtbot.keyClick(previewing, Qt.Key.Key_R, Qt.KeyboardModifier.ControlModifier)  # File > Run preview
    assert previewing.tabs.currentWidget() is panel
    qtbot.waitUntil(lambda: _finished(panel), timeout=120_000)
    assert panel.result is not None, panel.status.text()
    before, after = panel.before_label.pixmap(), panel.after_label.pixmap()
    assert (before.width(), before.height()) == (after.width(), after.height()) == (128, 128)  # 4x the crop
    assert panel.result.box == (144, 104, 32, 32) and panel.result.frames == (9, 11)
    assert panel.status.text() == f"Frame 10: {panel.result.describe()}"
    assert not np.array_equal(panel.result.before, panel.result.after)
    # "Before" is that crop of that frame: an independent decoder (OpenCV) agrees within a few levels.
    cap = cv2.VideoCapture(str(ANIMATION))
    for _ in range(11):
        ok, frame = cap.read()
    cap.release()
    assert ok
    source = frame[104:136, 144:176, ::-1].astype(float)
    shrunk = panel.result.before.astype(float).reshape(32, 4, 32, 4, 3).mean(axis=(1, 3))
    assert np.abs(shrunk - source).mean() < 6
    # A crop at the corner is kept inside the frame; the loaded pipeline is reused.
    loads = ENGINES.loads
    panel.x_spin.setValue(0)
    panel.y_spin.setValue(0)
    panel.run_button.click()
    qtbot.waitUntil(lambda: _finished(panel), timeout=120_000)
    assert panel.result.box == (0, 0, 32, 32) and ENGINES.loads == loads


def test_preview_compares_two_settings_side_by_side_with_their_numbers(previewing, qtbot):
    import numpy as np
    import torch

    from vs_uav.core.quality import downscale, psnr
    from vs_uav_gui.preview import read_crop

    panel = previewing.preview
    names = [panel.compare_combo.itemText(i) for i in range(panel.compare_combo.count())]
    assert names[0] == "(nothing)" and {"fast-preview", "old-film", "animation"} <= set(names)
    panel.compare_combo.setCurrentText("fast-preview")  # the shipped 8 steps against the form's 1
    panel.frame_spin.setValue(10)
    panel.run_button.click()
    assert panel.progress.maximum() == 1 + 8
    qtbot.waitUntil(lambda: _finished(panel), timeout=180_000)
    r = panel.result
    assert r is not None, panel.status.text()
    assert r.compared is not None and r.compared.shape == r.after.shape == (128, 128, 3)
    assert not np.array_equal(r.compared, r.after)
    assert panel._compared_column.isVisibleTo(panel) and panel.compared_title.text() == "After (fast-preview)"
    for name, numbers in (("preview_before", r.before_numbers), ("preview_after", r.numbers),
                          ("preview_compared", r.compared_numbers)):
        text = panel.numbers[name].text()
        assert text == numbers.describe() and text.startswith("PSNR-LR ") and "E*warp" in text
    # The numbers are the pictures': PSNR-LR of "after", recomputed from its 8-bit pixels.
    video, _, (first, _) = read_crop(panel.request())
    source = (video[0, :, 10 - first][None] + 1) / 2
    after = torch.from_numpy(r.after).permute(2, 0, 1)[None].float() / 255
    assert float(psnr(downscale(after, (32, 32)), source)[0]) == pytest.approx(r.numbers.psnr, abs=0.3)
    assert r.numbers.ewarp >= 0 and r.before_numbers.psnr > r.numbers.psnr - 40


def test_a_default_preview_after_an_fp8_one_gets_its_own_pipeline(previewing, qtbot):
    """The old preview cache's key left out weights, offload and compile: after a preview with
    fp8 weights, one with the default weights failed ("weights='default' on a pipeline whose
    U-Net already holds fp8 weights") until the editor restarted. The one engine cache keys on
    them, and holds at most its capacity of pipelines."""
    import numpy as np

    import weakref

    from vs_uav.core.acceleration import is_fp8
    from vs_uav.engine.cache import EngineKey

    panel = previewing.preview
    panel.size_spin.setValue(16)  # the model's load is most of the time: the least to denoise
    panel.context_spin.setValue(0)

    def run(weights: str):
        previewing.fields["weights"].editor.setCurrentText(weights)
        assert previewing.current is not None and previewing.current.settings.weights == weights
        panel.result = None  # a failure leaves the last result: it must not pass for this one
        panel.run_button.click()
        qtbot.waitUntil(lambda: _finished(panel), timeout=180_000)
        assert panel.result is not None and panel.status.text().startswith("Frame 35: "), panel.status.text()
        return panel.result, EngineKey.of(previewing.current.settings)

    def holds_fp8(engine) -> bool:
        return is_fp8(engine.model.unet)

    loads = ENGINES.loads
    fp8, fp8_key = run("fp8")
    assert ENGINES.loads == loads + 1 and fp8_key in ENGINES
    fp8_engine = weakref.ref(ENGINES.get(fp8_key))  # (kept: no load)
    assert holds_fp8(fp8_engine())
    plain, plain_key = run("default")
    # Its own pipeline with the default weights, not the fp8 one reconfigured: loaded afresh, or
    # an earlier default one that something in this process still holds (the cache finds it).
    plain_engine = ENGINES.get(plain_key)
    assert plain_key != fp8_key and plain_engine is not fp8_engine() and not holds_fp8(plain_engine)
    assert plain_key in ENGINES and fp8_key not in ENGINES and fp8_engine() is None  # the fp8 one was freed
    assert np.array_equal(plain.before, fp8.before) and plain.box == fp8.box
    # Not the same image, but only fp8's small deviation (measured: 1.8% of the values differ, by 1 level).
    diff = np.abs(plain.after.astype(int) - fp8.after.astype(int))
    assert diff.max() > 0, "the default preview gave the fp8 image"
    assert diff.max() <= 4 and diff.mean() < 0.25, (diff.max(), diff.mean())


def test_cancel_and_a_newer_preview_stop_a_running_one(previewing, qtbot):
    panel = previewing.preview
    previewing.fields["steps"].editor.setValue(500)  # about a minute with the tiny model
    job = panel.start()
    qtbot.waitUntil(lambda: panel.progress.value() >= 1, timeout=60_000)  # denoising has begun
    assert panel.cancel_button.isEnabled()
    panel.cancel_button.click()
    qtbot.waitUntil(lambda: _finished(panel), timeout=30_000)
    assert job.outcome == "cancelled" and panel.progress.value() < 500
    assert panel.status.text() == "Preview cancelled"
    assert panel.result is None and panel.after_label.pixmap().isNull()
    assert not panel.cancel_button.isEnabled() and panel.run_button.isEnabled()
    # A new preview while one runs replaces it: the old one stops, the new one's result shows.
    old = panel.start()
    qtbot.waitUntil(lambda: panel.progress.value() >= 1, timeout=60_000)
    previewing.fields["steps"].editor.setValue(1)  # the UI stays usable meanwhile
    new = panel.start()
    qtbot.waitUntil(lambda: _finished(panel), timeout=60_000)
    assert old.outcome == "cancelled" and new.outcome == "done"
    assert panel.after_label.pixmap().width() == 128 and panel.status.text().startswith("Frame 35: ")


def test_preview_errors_are_one_line(previewing, qtbot, tmp_path):
    panel = previewing.preview

    def run() -> str:
        panel.run_button.click()
        qtbot.waitUntil(lambda: _finished(panel), timeout=60_000)
        text = panel.status.text()
        assert "\n" not in text and panel.result is None
        return text

    nowhere = tmp_path / "no-model"
    previewing.fields["model"].editor.setText(str(nowhere))
    assert run() == (f"Preview failed: {nowhere}: model folder not found; run `uav download` to fetch or "
                     "repair the model folder, or set UAV_MODEL_DIR")
    # Said as it is (no "ModelLoadError: " before it) by its type: a UavError, neither a ValueError nor an OSError.
    with pytest.raises(ModelLoadError) as raised:
        render_preview(panel.request())
    assert isinstance(raised.value, UavError) and not isinstance(raised.value, (ValueError, OSError))
    previewing.fields["model"].editor.setText(str(MODEL_DIR))
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video\n")
    previewing.source_edit.setText(str(not_video))
    assert run().startswith(f"Preview failed: input {not_video}: not a readable video (")
    previewing.source_edit.setText("")
    assert run() == "choose a source video first"
    previewing.source_edit.setText(str(ANIMATION))
    previewing.fields["steps"].editor.setValue(0)  # below the minimum: the field refuses it
    previewing.fields["propagation_steps"].editor.setText("5")  # beyond steps=1: an error in the form
    assert run() == "the settings have errors; fix the marked fields first"
    assert previewing.statusBar().currentMessage() == panel.status.text()


def test_an_unreadable_source_is_refused_at_once_and_a_long_error_is_readable(previewing, tmp_path):
    """No "Rendering frame ..." for a file that is not a video: a cheap probe first, and the error
    shows as the button is clicked. The whole line is readable: it wraps inside the window."""
    from PySide6.QtCore import QRect

    panel = previewing.preview
    folder = tmp_path / "a folder with a rather long name" / "holding the footage of the old films" / "reel two"
    folder.mkdir(parents=True)
    not_video = folder / "the first reel of the old film, scanned again at a higher resolution.mp4"
    not_video.write_text("not a video\n")
    previewing.source_edit.setText(str(not_video))
    panel.run_button.click()  # no event processing, no waiting: the status is already the error
    text = panel.status.text()
    assert text.startswith(f"Preview failed: input {not_video}: not a readable video (") and "\n" not in text, text
    assert panel.job is None and panel.result is None
    label = panel.status
    metrics = label.fontMetrics()
    assert metrics.horizontalAdvance(text) > previewing.width()  # longer than the window is wide
    QApplication.processEvents()
    needed = metrics.boundingRect(QRect(0, 0, label.contentsRect().width(), 10_000),
                                  int(Qt.TextFlag.TextWordWrap), text)
    assert label.wordWrap() and label.toolTip() == text
    assert needed.width() <= label.contentsRect().width() and needed.height() <= label.contentsRect().height(), \
        (needed, label.contentsRect())
    assert label.geometry().right() <= panel.width() and previewing.width() <= 1280
    bar = previewing.statusBar()  # its one line is elided in the middle, the tooltip has it whole
    assert metrics.horizontalAdvance(bar.currentMessage()) <= bar.width() and bar.toolTip() == text
    assert bar.currentMessage().endswith("(Invalid data found when processing input)")


# -- "Render on": the same render as a uav upscale --cluster command ------------------------------

def test_render_on_ray_shows_the_equivalent_uav_command(window, qtbot):
    import shlex

    from vs_uav.app.cli import _resolve, build_parser

    open_source(window, ANIMATION)
    window.select_preset("old-film")
    machine = window.command_view.toPlainText()
    assert machine.startswith("vspipe -c y4m ") and not window.workers_spin.isVisible()
    type_into(qtbot, window.fields["noise_level"].editor, "135")  # an unsaved change to the preset
    window.render_on.setCurrentIndex(window.render_on.findData("local"))
    window.workers_spin.setValue(3)
    command = window.command_view.toPlainText()
    output = window.output_edit.text()
    assert command == shlex.join(["uav", "upscale", str(ANIMATION), "-o", output, "--preset", "old-film",
                                  "--noise-level", "135", "--cluster", "local", "--workers", "3"])
    window.copy_button.click()
    assert QGuiApplication.clipboard().text() == command
    # Read back by uav upscale's own parser: exactly the form's settings.
    args = build_parser().parse_args(shlex.split(command)[1:])
    resolved = _resolve(args, "uav upscale")
    assert (resolved.settings, resolved.encoder) == (window.current.settings, window.current.encoder)
    assert (args.cluster, args.workers, args.output) == ("local", "3", output)
    window.workers_spin.setValue(0)  # the lowest value: one worker per GPU (no --workers)
    assert window.command_view.toPlainText().endswith("--noise-level 135 --cluster local")
    window.render_on.setCurrentIndex(window.render_on.findData("cluster"))
    assert window.cluster_edit.isVisible()
    type_into(qtbot, window.cluster_edit, "10.0.0.5")
    assert window.command_view.toPlainText() == (
        "# Not generated: --cluster '10.0.0.5': accepted: 'local', HOST:PORT (a Ray cluster's address, "
        "e.g. 10.0.0.5:6379) or ray://HOST:PORT")
    assert not window.copy_button.isEnabled()
    type_into(qtbot, window.cluster_edit, "10.0.0.5:6379")
    assert window.command_view.toPlainText().endswith("--noise-level 135 --cluster 10.0.0.5:6379")
    assert window.copy_button.isEnabled()
    window.render_on.setCurrentIndex(window.render_on.findData("machine"))
    assert window.command_view.toPlainText() == machine  # noise_level is in the script, not the command


def test_the_uav_command_reproduces_every_preset_exactly(window):
    """Every shipped preset, changed in every value, from the defaults or from the preset: the
    command's options give back the form's settings."""
    import shlex

    from vs_uav.app.cli import _resolve, build_parser
    from vs_uav.app.job import upscale_command
    from vs_uav.app.cluster import ClusterOptions
    from vs_uav.app.presets import Preset
    from vs_uav.media.encoder import EncoderSettings
    from vs_uav.settings import UpscaleSettings

    odd = Preset("odd", UpscaleSettings(prompt="-a prompt, 'quoted'", steps=7, propagation_steps=[], seed=2**40,
                                        guidance_scale=1e-3, scene_change=False, cache_dir="/tmp/a b"),
                 EncoderSettings(codec="ffv1", scene_threshold=0.25))
    for name in presets.available():
        preset = presets.load(name)
        for target, base in ((preset, None), (odd, preset), (odd, None)):
            command = upscale_command(target, ANIMATION, Path("/tmp/o.mkv"), ClusterOptions("local", workers=2),
                                      base)
            args = build_parser().parse_args(shlex.split(command)[1:])
            resolved = _resolve(args, "uav upscale")
            assert (resolved.settings, resolved.encoder) == (target.settings, target.encoder), command


# -- the source probed off the UI thread; Render runs the form's job ---------------------------------

def test_the_source_is_probed_off_the_ui_thread_and_the_last_choice_wins(window, tmp_path):
    window.set_source(ANIMATION)  # returns before BestSource and ffprobe have answered
    assert window.video_label.text() == f"Reading {ANIMATION.name}\u2026" and window.video is None
    missing = tmp_path / "gone.mp4"
    window.set_source(missing)  # chosen while the first probe runs: its answer must not show
    assert window.video_label.text() == f"input {missing} not found"
    folder_probe = tmp_path
    open_source(window, folder_probe)
    assert window.video is None and "is a folder" in window.video_label.text(), window.video_label.text()
    open_source(window, ANIMATION)
    assert window.video is not None and window.video_label.text() == window.video.describe()
    assert window.preview.frame_spin.maximum() == window.video.frames - 1
    # The field losing focus unchanged (editingFinished) probes nothing again: the label stays.
    window.source_edit.editingFinished.emit()
    assert not window.probing() and window.video_label.text() == window.video.describe()


def _small_clip(folder: Path) -> Path:
    path = folder / "small.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(ANIMATION), "-vf", "scale=48:32", "-frames:v", "12",
                    "-c:v", "ffv1", "-c:a", "aac", "-t", "0.48", str(path)], check=True)
    return path


@pytest.mark.slow
def test_render_runs_the_forms_job_and_cancel_stops_it(previewing, qtbot, tmp_path):
    """Render runs the job ``uav upscale`` runs (vs_uav.app.job.run_job) from the form's source,
    settings and output; Cancel ends vspipe and ffmpeg and leaves no output."""
    from vs_uav.media.probe import count_frames

    source = _small_clip(tmp_path)
    open_source(previewing, source)
    bar, output = previewing.render_bar, Path(previewing.output_edit.text())
    assert output == tmp_path / "small.uav.mp4" and bar.render_button.isEnabled()
    previewing.fields["steps"].editor.setValue(500)  # long enough to be cancelled while it renders
    job = bar.start()
    assert job.job.output == output and job.job.settings == previewing.current.settings
    assert not bar.render_button.isEnabled() and bar.start() is None  # one render at a time
    qtbot.waitUntil(lambda: bar.progress.maximum() == 12 or not bar.running(), timeout=120_000)
    assert bar.running(), bar.status.text()  # probed and checked: the render runs
    bar.cancel_button.click()
    qtbot.waitUntil(lambda: not bar.running() and bar.job is None, timeout=60_000)
    assert job.outcome == "cancelled" and bar.status.text().startswith("Render cancelled: vspipe and ffmpeg ended; ")
    assert not output.exists() and bar.result is None
    previewing.fields["steps"].editor.setValue(1)
    done = bar.start()
    qtbot.waitUntil(lambda: not bar.running() and bar.job is None, timeout=180_000)
    assert done.outcome == "done", bar.status.text()
    assert bar.status.text().startswith(f"Wrote {output} in ") and bar.progress.value() == 12
    assert count_frames(output) == 12 and not (tmp_path / ".small.uav.mp4.uav-work").exists()
    # What cannot be made is said in one line, and nothing starts.
    previewing.fields["steps"].editor.setValue(1)
    type_into(qtbot, previewing.output_edit, str(source))
    assert bar.start() is None and bar.status.text() == f"--output {source} is the input; choose another file"
    missing = tmp_path / "gone.mp4"
    previewing.set_source(missing)
    assert bar.start() is None and bar.status.text() == f"input {missing} not found"
    # Closing the window cancels a running render first: nothing outlives the editor.
    open_source(previewing, source)
    second = tmp_path / "second.mkv"
    type_into(qtbot, previewing.output_edit, str(second))
    previewing.fields["steps"].editor.setValue(500)
    running = bar.start()
    qtbot.waitUntil(lambda: bar.progress.maximum() == 12 or not bar.running(), timeout=120_000)
    assert bar.running(), bar.status.text()
    previewing.close()
    assert not running.isRunning() and running.outcome == "cancelled" and not second.exists()


@pytest.mark.slow
def test_render_on_ray_runs_the_same_job_on_a_local_cluster(previewing, qtbot, tmp_path, monkeypatch):
    """*Render on: Ray (local)* renders through the cluster from the editor's thread."""
    import tempfile

    from vs_uav.media.probe import count_frames

    monkeypatch.setenv("RAY_TMPDIR", tempfile.mkdtemp(prefix="uavray", dir="/tmp"))  # short: Ray's sockets
    source = _small_clip(tmp_path)
    open_source(previewing, source)
    previewing.render_on.setCurrentIndex(previewing.render_on.findData("local"))
    previewing.workers_spin.setValue(1)
    bar = previewing.render_bar
    job = bar.start()
    assert job.job.cluster is not None and job.job.cluster.workers == 1
    qtbot.waitUntil(lambda: not bar.running() and bar.job is None, timeout=240_000)
    assert job.outcome == "done", bar.status.text()
    assert re.fullmatch(rf"Wrote {re.escape(str(job.job.output))} in \d+ s: 12 frames in 1 segment \(0 already done\) "
                        r"on 1 worker, 1 node, in \d+ s \(\d+\.\d\d fps\)", bar.status.text()), bar.status.text()
    assert count_frames(job.job.output) == 12
