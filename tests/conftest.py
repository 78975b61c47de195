"""Shared test helpers: where the reference fixtures live and how to read a case."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# The GUI tests drive real Qt widgets; with no display (CI) Qt renders offscreen.
# A DISPLAY (e.g. Xvfb) or an explicit QT_QPA_PLATFORM wins.
if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parent.parent
# The official-implementation fixtures; other fixture sets of the same kind can be
# pointed to with UAV_REFERENCE_DIR.
REFERENCE = Path(os.environ.get("UAV_REFERENCE_DIR", REPO.parent / "shared" / "reference"))
PUBLIC = REFERENCE / "public"
MODEL_DIR = PUBLIC / "model"
CASES_DIR = PUBLIC / "cases"
MANIFESTS = REFERENCE / "manifests"
CONFIGS = REFERENCE / "configs"

# Outputs are of order 1; the official code itself differs by ~2.5e-5 between thread counts.
ATOL = 1e-4


def case_names(prefix: str = "", suffix: str = "") -> list[str]:
    """The reference cases named ``prefix*suffix``, for parametrising a test module.

    Missing fixtures fail the module's collection with a message naming the folder: a
    parametrisation over an empty list would make its tests vanish without a word.
    """
    if not CASES_DIR.is_dir():
        pytest.fail(f"reference fixtures missing: {CASES_DIR} is not a folder (set UAV_REFERENCE_DIR to the "
                    "folder holding public/cases, or restore ../shared/reference)", pytrace=False)
    names = sorted(p.stem for p in CASES_DIR.glob(f"{prefix}*{suffix}.json"))
    if not names:
        pytest.fail(f"reference fixtures missing: no {prefix}*{suffix}.json case in {CASES_DIR}", pytrace=False)
    return names


def load_case(name: str):
    """Return (meta, tensors) of one reference case."""
    from safetensors.torch import load_file

    meta = json.loads((CASES_DIR / f"{name}.json").read_text())
    tensors = load_file(str(CASES_DIR / f"{name}.safetensors"))
    return meta, tensors


def max_abs_err(a, b) -> float:
    assert tuple(a.shape) == tuple(b.shape), f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    return (a.double() - b.double()).abs().max().item()


@pytest.fixture(scope="session")
def model_dir() -> Path:
    if not MODEL_DIR.is_dir():
        pytest.fail(f"reference model folder missing: {MODEL_DIR}")
    return MODEL_DIR


def copy_model(dst: Path) -> Path:
    """A writable copy of the tiny reference model at ``dst`` (the shared one is read-only):
    a folder of its own, so that no engine another test loaded from elsewhere is reused."""
    import shutil

    shutil.copytree(MODEL_DIR, dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def tiny_video(path: Path) -> Path:
    """A real 3-frame 32x24 video at ``path`` (what `uav script` probes; a missing input is refused)."""
    import subprocess

    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=32x24:rate=25", "-frames:v", "3",
                    "-pix_fmt", "yuv420p", str(path)], check=True)
    return path
