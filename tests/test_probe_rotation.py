"""A phone video's rotation: BestSource turns the picture upright, and the probe turns its
sample aspect ratio with it, so the output's tags describe the pixels it holds."""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

from vs_uav.media.probe import probe
from vs_uav.media.script import reading_script


def test_a_quarter_turned_source_gets_its_sar_turned_too(tmp_path):
    flat = tmp_path / "flat.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=s=64x48:r=25", "-frames:v", "3", "-vf",
                    "setsar=81/80", "-c:v", "libx264", str(flat)], check=True)
    turned = tmp_path / "turned.mp4"  # as a phone held upright writes it: a display matrix, not turned pixels
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(flat), "-c", "copy", "-metadata:s:v:0", "rotate=90",
                    str(turned)], check=True)
    plain = probe(flat, reading_script(flat))
    upright = probe(turned, reading_script(turned))
    assert (plain.width, plain.height, plain.sar) == (64, 48, Fraction(81, 80))
    assert (upright.width, upright.height, upright.sar) == (48, 64, Fraction(80, 81))
