"""The preset editor's Captions view, driven with pytest-qt: Caption all on a background thread
(a tiny Florence-2 saved by save_pretrained), Cancel, a thumbnail per scene, an edited caption
saved to the file the generated script applies."""

from __future__ import annotations


import pytest
from captioner_models import tiny_florence2
from clips import AIGC, ANIMATION, MOVIE, splice
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLineEdit

from vs_uav.media.captions import read_captions
from vs_uav_gui.captions import THUMB_HEIGHT
from vs_uav_gui.window import PresetEditor

from test_gui import open_source


@pytest.fixture
def editor(qtbot, tmp_path, monkeypatch) -> PresetEditor:
    monkeypatch.setenv("UAV_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("UAV_CAPTIONER_DIR", str(tmp_path / "captioners"))
    monkeypatch.setenv("UAV_CAPTION_CACHE", str(tmp_path / "cache"))
    tiny_florence2(tmp_path / "captioners" / "florence-2", seed=1)
    w = PresetEditor()
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    return w


def test_caption_all_shows_a_row_per_scene_and_an_edit_is_saved_for_the_script(editor, qtbot, tmp_path):
    source = tmp_path / "shots.mp4"
    cuts = splice(source, [(ANIMATION, 0, 14), (AIGC, 0, 12), (MOVIE, 5, 14)], (64, 48), audio=False)
    (tmp_path / "cuts.txt").write_text("\n".join(map(str, cuts)))
    open_source(editor, source)
    editor.fields["scene_cuts"].set_value(str(tmp_path / "cuts.txt"))
    editor.revalidate()
    panel = editor.captions
    editor.tabs.setCurrentIndex(2)
    assert editor.tabs.tabText(2) == "Ca&ptions"
    path = tmp_path / "shots.captions.tsv"
    assert panel.path() == path
    # Cancel: nothing is written.
    thread = panel.caption_all()
    thread.cancel()
    qtbot.waitUntil(lambda: not panel.running(), timeout=120_000)
    assert thread.outcome == "cancelled" and not path.exists()
    assert panel.status.text().startswith("Captioning cancelled")
    # Caption all: progress, one row per scene with its thumbnail, timecode and caption.
    seen = []
    thread = panel.caption_all()
    thread.progressed.connect(lambda done, total: seen.append((done, total)))
    assert not panel.caption_button.isEnabled() and panel.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: not panel.running(), timeout=120_000)
    assert thread.outcome == "done", panel.status.text()
    assert seen[-1] == (3, 3) and panel.table.rowCount() == 3
    assert [panel.table.item(i, 1).text() for i in range(3)] == ["0", "14", "26"]
    assert [panel.table.item(i, 2).text() for i in range(3)] == ["00:00:00:00", "00:00:00:14", "00:00:01:01"]
    pixmap = panel.table.item(1, 0).data(Qt.ItemDataRole.DecorationRole)
    assert not pixmap.isNull() and pixmap.height() == THUMB_HEIGHT and pixmap.width() == 72  # 64x48 source
    assert not panel.table.item(0, 1).flags() & Qt.ItemFlag.ItemIsEditable
    # An edit, typed into the caption cell, saved: the file has it and the script applies the file.
    panel.table.setCurrentCell(1, 3)
    panel.table.editItem(panel.table.item(1, 3))
    editor_widget = panel.table.viewport().findChild(QLineEdit)
    editor.activateWindow()
    editor_widget.setFocus()
    editor_widget.selectAll()
    qtbot.keyClicks(editor_widget, "a koala in a tree")
    # Saved while the cell is still being edited (as a click on Save does): the typed text counts.
    assert panel.save() == path
    assert [s.caption for s in read_captions(path)][1] == "a koala in a tree"
    assert editor.fields["captions"].value() == str(path)
    assert f"clip = vs_uav.apply_captions(clip, {str(path)!r})" in editor.script_view.toPlainText()
    # Loading the file again shows the edit.
    panel.table.setRowCount(0)
    panel.load()
    qtbot.waitUntil(lambda: not panel.running(), timeout=60_000)
    assert panel.table.item(1, 3).text() == "a koala in a tree"
