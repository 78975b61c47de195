"""`uav doctor` on this (healthy) installation and on deliberately broken ones: a
VapourSynth without the uav plugin, vspipe without its configuration, a wrong or damaged
model folder. Each runs the real command in a fresh process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MODEL_DIR, REPO
from vs_uav import weights
from vs_uav.doctor import FIXES


@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> Path:
    return weights.write_manifests(MODEL_DIR, tmp_path_factory.mktemp("manifests"))


def doctor(*args: str, env: dict | None = None) -> tuple[int, dict[str, str], str]:
    r = subprocess.run([sys.executable, "-m", "vs_uav", "doctor", *args], capture_output=True, text=True,
                       env={**os.environ, **(env or {})}, timeout=300, cwd=REPO)
    lines = {}
    for line in r.stdout.splitlines():
        if line.startswith("["):
            name = line[7:].split(":", 1)[0]
            lines[name] = line
    return r.returncode, lines, r.stdout


def test_healthy_installation(manifests):
    rc, lines, out = doctor("--model", str(MODEL_DIR), "--manifests", str(manifests))
    assert rc == 0, out
    for name in ("python", "vapoursynth", "vspipe", "plugin", "source", "ffmpeg", "encoders", "torch", "disk"):
        assert lines[name].startswith("[ ok ]"), lines[name]
    # The tiny model has no propagator: usable (DIS flow), said as a warning.
    assert lines["model"].startswith("[warn] model: ") and "verified; no RAFT weights" in lines["model"]
    assert lines["devices"].startswith(("[ ok ]", "[warn]"))
    assert out.rstrip().endswith("uav doctor: all required checks passed")


def test_plugin_removed(manifests, tmp_path):
    """A VapourSynth whose plugin folder lacks uav/: the same wheel, copied without it."""
    import vapoursynth

    site = Path(vapoursynth.__file__).parent.parent
    shadow = tmp_path / "site"
    shutil.copytree(site / "vapoursynth", shadow / "vapoursynth", ignore=shutil.ignore_patterns("uav"))
    for libs in site.glob("vapoursynth*.libs"):  # bestsource's bundled libraries
        shutil.copytree(libs, shadow / libs.name)
    env = {"PYTHONPATH": str(shadow), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    # vspipe of this copy needs its own configuration (written to the temporary XDG folder).
    subprocess.run([sys.executable, "-m", "vapoursynth", "config"], env={**os.environ, **env}, check=True,
                   capture_output=True)
    rc, lines, out = doctor("--model", str(MODEL_DIR), "--manifests", str(manifests), env=env)
    assert rc == 1
    assert lines["vspipe"].startswith("[ ok ]"), out
    assert lines["plugin"] == (f"[FAIL] plugin: no uav namespace in a fresh core under vspipe (looked in "
                               f"{shadow / 'vapoursynth' / 'plugins' / 'uav'}) -> {FIXES['plugin']}")
    assert "uav doctor: FAILED: plugin" in out


def test_vspipe_not_configured(manifests, tmp_path):
    rc, lines, out = doctor("--model", str(MODEL_DIR), "--manifests", str(manifests),
                            env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert rc == 1
    assert lines["vspipe"].startswith("[FAIL] vspipe: ") and lines["vspipe"].endswith(FIXES["vspipe"])
    assert "vapoursynth config" in lines["vspipe"]


def test_wrong_or_damaged_model_folder(manifests, tmp_path):
    rc, lines, _ = doctor(env={"UAV_MODEL_DIR": str(tmp_path / "nowhere")})
    assert rc == 1
    assert lines["model"] == f"[FAIL] model: {tmp_path / 'nowhere'}: model folder not found -> {FIXES['model']}"
    broken = tmp_path / "uav"
    shutil.copytree(MODEL_DIR, broken)
    unet = broken / "unet" / "unet_video.bin"
    unet.chmod(0o644)
    unet.write_bytes(unet.read_bytes()[:1000])
    rc, lines, _ = doctor("--manifests", str(manifests), env={"UAV_MODEL_DIR": str(broken)})
    assert rc == 1
    assert lines["model"].startswith(f"[FAIL] model: {unet}: truncated or corrupted weight file")
    # The full-size manifests (the default) refuse a model of another size.
    rc, lines, _ = doctor("--model", str(MODEL_DIR))
    assert rc == 1 and "not the official unet weights" in lines["model"]


def test_an_interrupted_download_is_pointed_out(tmp_path):
    from vs_uav.doctor import check_model

    dest = tmp_path / "uav"
    staging = weights.staging_dir(dest)
    staging.mkdir()
    check = check_model(dest)
    assert check.line() == (f"[FAIL] model: {dest}: model folder not found; an interrupted download is in "
                            f"{staging} -> {FIXES['model']}")
