"""`uav-gui` on a machine without a display says so in one line instead of Qt's abort."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

UAV_GUI = str(Path(sys.executable).parent / "uav-gui")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="X11/Wayland are Linux's")
def test_no_display_is_one_line_naming_what_works():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    run = subprocess.run([UAV_GUI], capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith("uav-gui: no display: DISPLAY and WAYLAND_DISPLAY are unset; accepted: ")
    assert "xvfb-run uav-gui" in run.stderr and "QT_QPA_PLATFORM=offscreen" in run.stderr


def test_a_platform_that_needs_no_display_is_let_through():
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gui"))
    from vs_uav_gui.window import no_display

    assert no_display({"QT_QPA_PLATFORM": "offscreen"}) == ""
    assert no_display({"DISPLAY": ":0"}) == ""
    assert no_display({"WAYLAND_DISPLAY": "wayland-0"}) == ""
    assert no_display({"QT_QPA_PLATFORM": "xcb"}).startswith("no display") == sys.platform.startswith("linux")
