"""Take docs/gui.png: the preset editor as a real window on a 1280x720 screen, with a preset and a real source.

    .venv/bin/python scripts/screenshot.py [--preset old-film] [--source ../shared/videos/old_movie_1.mp4]

Runs under Xvfb when it is installed and there is no display (apt-get install xvfb), else with
Qt's offscreen platform. Presets and window state come from a fresh temporary folder, so the
picture shows only shipped presets and default geometry.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHILD = "UAV_SCREENSHOT_CHILD"


def take(preset: str, source: Path, out: Path, size: tuple[int, int]) -> None:
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(["uav-gui"])
    app.setStyle("Fusion")  # the same look on every platform plugin
    from vs_uav_gui.window import PresetEditor

    window = PresetEditor()
    window.resize(*size)
    window.select_preset(preset)
    window.set_source(source)
    deadline = time.monotonic() + 60
    while window.probing() and time.monotonic() < deadline:  # the probe answers (a background thread)
        app.processEvents()
        time.sleep(0.02)
    app.processEvents()
    window.show()
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:  # let layouts and fonts settle
        app.processEvents()
        time.sleep(0.02)
    window.fields["prompt"].editor.setFocus()
    app.processEvents()
    out.parent.mkdir(parents=True, exist_ok=True)
    if not window.grab().save(str(out)):
        raise SystemExit(f"screenshot: cannot write {out}")
    window.store.clear()  # the temporary config folder is removed anyway; leave nothing behind
    window.close()
    print(f"screenshot: wrote {out} ({window.width()}x{window.height()}, "
          f"{os.environ.get('QT_QPA_PLATFORM', 'default')} platform)", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="old-film")
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared" / "videos" / "old_movie_1.mp4")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "gui.png")
    parser.add_argument("--size", default="1280x720", help="the screen and window size (default: a 1280x720 screen)")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    if os.environ.get(CHILD):
        take(args.preset, args.source.resolve(), args.output, size)  # type: ignore[arg-type]
        return 0

    with tempfile.TemporaryDirectory(prefix="uav-shot-") as tmp:
        env = {**os.environ, CHILD: "1", "UAV_CONFIG_DIR": tmp}
        xvfb = shutil.which("Xvfb")
        if xvfb and not os.environ.get("DISPLAY"):
            display = f":{90 + os.getpid() % 9}"
            server = subprocess.Popen([xvfb, display, "-screen", "0", f"{size[0]}x{size[1]}x24",
                                       "-nolisten", "tcp"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                time.sleep(1.0)
                run = subprocess.run([sys.executable, __file__, *sys.argv[1:]],
                                     env={**env, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"})
                if run.returncode == 0:
                    return 0
                print("screenshot: Xvfb/xcb failed; falling back to the offscreen platform", file=sys.stderr)
            finally:
                server.terminate()
                server.wait()
        return subprocess.run([sys.executable, __file__, *sys.argv[1:]],
                              env={**env, "QT_QPA_PLATFORM": env.get("QT_QPA_PLATFORM", "offscreen")}).returncode


if __name__ == "__main__":
    sys.exit(main())
