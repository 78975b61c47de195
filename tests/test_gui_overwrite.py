"""The editor's Render never replaces a file at the output without asking: refused when the user
says no (the file untouched), the job made with --overwrite when they say yes."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("pytestqt")

from conftest import tiny_video  # noqa: E402

from vs_uav.app.job import UpscaleJob  # noqa: E402
from vs_uav.media.encoder import EncoderSettings  # noqa: E402
from vs_uav.settings import UpscaleSettings  # noqa: E402


def test_an_existing_output_is_replaced_only_when_the_user_says_so(qtbot, tmp_path):
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from vs_uav_gui.render import RenderBar

    source = tiny_video(tmp_path / "in.mp4")
    output = tmp_path / "precious.mkv"
    output.write_bytes(b"the user's own file")
    asked: list = []
    bar = RenderBar(lambda: UpscaleJob.create(source, UpscaleSettings(steps=1, model=str(tmp_path / "no-model")),
                                              EncoderSettings(codec="ffv1"), output))
    qtbot.addWidget(bar)
    bar.confirm_overwrite = lambda path: asked.append(path) or False
    assert bar.start() is None and asked == [output]
    assert bar.status.text() == f"Not rendered: {output} is there already (not replaced)"
    assert output.read_bytes() == b"the user's own file" and not bar.running()
    bar.confirm_overwrite = lambda path: True
    thread = bar.start()  # asked and answered yes: the job runs with --overwrite (and fails on the missing model)
    assert thread is not None and thread.job.overwrite
    qtbot.waitUntil(lambda: not bar.running(), timeout=120_000)
    assert output.read_bytes() == b"the user's own file"  # a failed render replaces nothing
