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
from conftest import MODEL_DIR, REPO, copy_model

from vs_uav.app.doctor import FIXES
from vs_uav.weights.download import staging_dir
from vs_uav.weights.verify import write_manifests


@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> Path:
    return write_manifests(MODEL_DIR, tmp_path_factory.mktemp("manifests"))


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
    # The full-size manifests (the default) on a complete model of another size: not called damaged.
    rc, lines, _ = doctor("--model", str(MODEL_DIR))
    assert lines["model"].startswith(f"[warn] model: {MODEL_DIR}: complete and readable, but not the official "
                                     f"model ({MODEL_DIR / 'unet' / 'unet_video.bin'}: does not match the "
                                     "official unet weights: "), lines["model"]
    # It loads (its weights fit its configs): a finetune or another model, not a damaged download.
    assert lines["model"].endswith(" -> a finetune or a model of another size: verify it against its own manifests, "
                                   "`uav doctor --manifests DIR` (vs_uav.weights.verify.write_manifests makes them); if it "
                                   "should be the official model, `uav download --force`"), lines["model"]
    assert "delete it" not in lines["model"]


def _official_layout_copy(tmp_path) -> Path:
    return copy_model(tmp_path / "uav")


def test_a_damaged_file_is_told_to_download_again_whatever_the_manifests(tmp_path):
    from vs_uav.app.doctor import check_model

    folder = _official_layout_copy(tmp_path)
    vae = folder / "vae" / "vae_3d.bin"
    vae.write_bytes(vae.read_bytes()[:2000])
    check = check_model(folder)  # the unet differs from the official one too: the damage is what counts
    assert check.status == "fail"
    assert check.line().startswith(f"[FAIL] model: {vae}: truncated or corrupted weight file (")
    assert "delete it and run `uav download` again" in check.line() and "--manifests" not in check.detail


def test_weights_that_do_not_fit_their_config_fail(tmp_path):
    import json

    from vs_uav.app.doctor import check_model

    folder = _official_layout_copy(tmp_path)
    config = folder / "unet" / "unet_video_config.json"
    data = json.loads(config.read_text())
    data["cross_attention_dim"] = data["cross_attention_dim"] * 2  # a config of another model
    config.write_text(json.dumps(data))
    check = check_model(folder)
    assert check.status == "fail", check.line()
    assert check.detail.startswith(f"{folder / 'unet' / 'unet_video.bin'}: does not match unet/unet_video_config.json")
    assert check.line().endswith(f" -> {FIXES['model']}")


def test_an_interrupted_download_is_pointed_out(tmp_path):
    from vs_uav.app.doctor import check_model

    dest = tmp_path / "uav"
    staging = staging_dir(dest)
    staging.mkdir()
    check = check_model(dest)
    assert check.line() == (f"[FAIL] model: {dest}: model folder not found; an interrupted download is in "
                            f"{staging} -> {FIXES['model']}")


# Run in a fresh interpreter where importing VapourSynth or torch fails, as on an installation
# that lacks them; `uav doctor` must still finish every check.
_BLOCKED = """
import sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("vapoursynth", "torch"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Blocked())
from vs_uav.app.cli import main
sys.exit(main(["doctor", "--model", sys.argv[1]]))
"""


def _blocked_doctor(model: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BLOCKED, str(model)], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def test_without_vapoursynth_torch_or_model(tmp_path):
    missing = tmp_path / "no-model"
    r = _blocked_doctor(missing)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("[")]
    assert [line[7:].split(":", 1)[0] for line in lines] == list(FIXES)  # one line per check, in order
    by_name = {line[7:].split(":", 1)[0]: line for line in lines}
    for name in ("vapoursynth", "torch", "model"):
        assert by_name[name].startswith(f"[FAIL] {name}: ") and by_name[name].endswith(f" -> {FIXES[name]}")
    assert "No module named 'vapoursynth'" in by_name["vapoursynth"]
    assert "No module named 'torch'" in by_name["torch"]
    assert by_name["model"] == f"[FAIL] model: {missing}: model folder not found -> {FIXES['model']}"
    # What cannot be checked without them says so, and leaves the fix to the line above.
    for name in ("vspipe", "plugin", "source", "devices"):
        assert by_name[name].startswith(f"[skip] {name}: not checked: needs "), by_name[name]
    summary = r.stdout.rstrip().splitlines()[-1]
    assert summary.startswith("uav doctor: FAILED: ")
    assert {"vapoursynth", "torch", "model"} <= set(summary.removeprefix("uav doctor: FAILED: ").split(", "))


def test_a_model_present_without_torch_is_not_verified():
    r = _blocked_doctor(MODEL_DIR)
    assert "Traceback" not in r.stdout + r.stderr
    model = next(line for line in r.stdout.splitlines() if line.startswith(("[skip] model", "[FAIL] model")))
    assert model == f"[skip] model: {MODEL_DIR}: not verified: needs torch"


# -- qt: the system libraries of Qt's xcb platform plugin (real ldd runs on real ELF files) --------

def _shared_library(folder: Path, name: str, links: tuple[str, ...] = ()) -> Path:
    """A real shared library ``name`` (its soname too) built with the C compiler, linking ``links``
    (file names in ``folder`` or system libraries such as libm.so.6)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc) to build a test library")
    source = folder / f"{name}.c"
    source.write_text("int uav_test_symbol(void) { return 1; }\n")
    out = folder / name
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(out), f"-Wl,-soname,{name}", str(source), f"-L{folder}",
                    "-Wl,--no-as-needed", *(f"-l:{lib}" for lib in links)], check=True, capture_output=True)
    return out


def test_qt_check_finds_the_missing_libraries_of_a_plugin(tmp_path):
    from vs_uav.app.doctor import QT_XCB_PACKAGES, check_qt

    dependency = _shared_library(tmp_path, "libuavtest-missing.so.0")
    plugin = _shared_library(tmp_path, "libqxcb.so", ("libuavtest-missing.so.0", "libm.so.6"))
    dependency.unlink()  # as on a machine without the package: the loader cannot find it
    check = check_qt(plugin, {**QT_XCB_PACKAGES, "libuavtest-missing.so.0": "libuavtest0"})
    assert check.line() == (f"[warn] qt: {plugin} cannot load: missing libuavtest-missing.so.0; "
                            f"`apt-get install libuavtest0` -> {FIXES['qt']}")
    # A library no package is known for is still named.
    assert check_qt(plugin).detail == f"{plugin} cannot load: missing libuavtest-missing.so.0; " \
                                      "no known package for libuavtest-missing.so.0"


def test_qt_check_ok_when_every_library_is_found(tmp_path):
    from vs_uav.app.doctor import check_qt

    plugin = _shared_library(tmp_path, "libqxcb.so", ("libm.so.6",))
    assert check_qt(plugin).line() == f"[ ok ] qt: every library of the xcb platform plugin is present ({plugin})"
    assert check_qt(tmp_path / "nowhere.so").status == "warn"


def test_qt_check_of_this_installation():
    """The real plugin of the installed PySide6: present, and whatever this machine lacks has a
    package in the table (so the fix names it)."""
    from vs_uav.app.doctor import QT_APT_GET, QT_XCB_PACKAGES, check_qt, xcb_plugin

    plugin = xcb_plugin()
    assert plugin is not None and plugin.is_file()
    check = check_qt()
    assert check.status in ("ok", "warn") and str(plugin) in check.detail, check.line()
    assert "no known package" not in check.detail, check.line()
    assert QT_APT_GET in FIXES["qt"] and all(p in QT_APT_GET.split() for p in QT_XCB_PACKAGES.values())


_NO_PYSIDE = """
import sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "PySide6":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Blocked())
from vs_uav.app.doctor import check_qt
print(check_qt().line())
"""


def test_qt_check_is_skipped_without_pyside6():
    r = subprocess.run([sys.executable, "-c", _NO_PYSIDE], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.stdout.strip() == "[skip] qt: not checked: PySide6 is not installed (the preset editor is optional)", \
        r.stdout + r.stderr


def test_the_readme_lists_the_qt_packages():
    """The Preset editor section's apt-get line installs every package of the qt check's table."""
    import re

    from vs_uav.app.doctor import QT_APT_GET

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Preset editor"):readme.index("## Parameters")]
    block = re.search(r"```sh\n\s*(apt-get install [^`]*)```", section).group(1)
    assert block.replace("\\\n", " ").split() == QT_APT_GET.split()
