"""``uav doctor``: is this installation able to render, and if not, what to do.

A VapourSynth setup can be half-broken in many ways (vspipe cannot find Python, the plugin
is not autoloaded, ffmpeg lacks an encoder, the model folder is incomplete). Each check
gives one line; a failing one names its fix. The fixes are data (:data:`FIXES`) so that the
README's troubleshooting section is generated from them and cannot drift.

The doctor must work on the installations it diagnoses: this module imports neither
VapourSynth nor torch at import time, and every check runs (or says why it was skipped)
whatever the others found.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Mapping, Optional, Sequence, Union

from vs_uav.weights.folder import LAYOUT, default_model_dir

# "skip": not checkable because an earlier check failed (that line carries the fix).
Status = Literal["ok", "warn", "fail", "skip"]

MIN_FREE_GIB = 10.0  # the official weights (~4.5 GiB in float32) plus a chunk cache

# The system libraries that Qt's xcb platform plugin (PySide6's libqxcb.so, through
# libQt6XcbQpa, libQt6Gui and libQt6DBus) links, with the Debian/Ubuntu package of each:
# `uav-gui` needs them to open a window on X11. A bare Linux (a container, a server) lacks some.
QT_XCB_PACKAGES: dict[str, str] = {
    "libxcb-cursor.so.0": "libxcb-cursor0", "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-keysyms.so.1": "libxcb-keysyms1", "libxcb-image.so.0": "libxcb-image0",
    "libxcb-render-util.so.0": "libxcb-render-util0", "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-randr.so.0": "libxcb-randr0", "libxcb-sync.so.1": "libxcb-sync1", "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-shm.so.0": "libxcb-shm0", "libxcb-render.so.0": "libxcb-render0", "libxcb-util.so.1": "libxcb-util1",
    "libxcb-xkb.so.1": "libxcb-xkb1", "libxcb.so.1": "libxcb1", "libX11-xcb.so.1": "libx11-xcb1",
    "libX11.so.6": "libx11-6", "libxkbcommon.so.0": "libxkbcommon0", "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libEGL.so.1": "libegl1", "libGL.so.1": "libgl1", "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6", "libdbus-1.so.3": "libdbus-1-3", "libglib-2.0.so.0": "libglib2.0-0",
    "libgthread-2.0.so.0": "libglib2.0-0",
}
QT_APT_GET = "apt-get install " + " ".join(dict.fromkeys(QT_XCB_PACKAGES.values()))

# One fix per check; README's troubleshooting table is generated from this.
FIXES: dict[str, str] = {
    "python": "vs-uav needs Python >= 3.12: recreate the environment with `make setup` (it finds a 3.12 "
              "interpreter) or set UAV_PYTHON=/path/to/python3.12",
    "vapoursynth": "install the VapourSynth wheel into this environment: `pip install vapoursynth` (`make setup` "
                   "does it)",
    "vspipe": "vspipe cannot start Python: run `vapoursynth config` in this environment (`make setup` does it)",
    "plugin": "the uav namespace is not autoloaded: reinstall vs-uav (`make setup`, or `pip install -e .` in the "
              "checkout) to build the plugin into site-packages/vapoursynth/plugins/uav",
    "source": "no source filter to read videos: `pip install vapoursynth-bestsource`",
    "ffmpeg": "ffmpeg not found: install it (`apt-get install ffmpeg`) or put it on PATH",
    "encoders": "this ffmpeg lacks an encoder the presets use: install a full ffmpeg build (Debian's has all "
                "four), or pick another --codec",
    "torch": "torch is missing or broken: re-run `make setup`",
    "devices": "no CUDA device: vs-uav runs on the CPU, minutes per frame with the full-size model; a CUDA GPU "
               "is what it is made for",
    "model": "run `uav download` to fetch and verify the weights (or set UAV_MODEL_DIR to an upscale_a_video "
             "folder); a complete folder that is not the official model (a finetune, another size) is a warning: "
             "verify it against its own manifests, `uav doctor --manifests DIR`",
    "disk": f"less than {MIN_FREE_GIB:.0f} GiB free for the weights and the chunk cache: free some space or "
            "point --dir / cache_dir elsewhere",
    "captioners": "optional, for --prompt auto and `uav caption`: `uav download --captioner florence-2` (the "
                  "default, small) or `--captioner llava-1.5` (the official, 13 B); a damaged one: download it again",
    "qt": "the preset editor (uav-gui) cannot open a window on X11: install the system libraries that Qt's xcb "
          f"platform plugin needs, e.g. on Debian/Ubuntu `{QT_APT_GET}` (rendering does not need them)",
    "cluster": "to render on a Ray cluster (`uav upscale --cluster`), install Ray: `pip install 'vs-uav[cluster]'` "
               "(`make setup` does it); one-machine renders do not need it. RAY_ADDRESS set but not answering: "
               "start that cluster (`ray start --head`), correct the address, or unset it for a local instance",
}


# A complete, readable folder whose weights fit its configs but not the manifests: it loads.
OTHER_MODEL_ADVICE = ("a finetune or a model of another size: verify it against its own manifests, "
                      "`uav doctor --manifests DIR` (vs_uav.weights.verify.write_manifests makes them); if it should be "
                      "the official model, `uav download --force`")


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    advice: str = ""  # the fix for this line when FIXES[name] is not it

    @property
    def fix(self) -> str:
        return (self.advice or FIXES[self.name]) if self.status in ("warn", "fail") else ""

    def line(self) -> str:
        mark = {"ok": "[ ok ]", "warn": "[warn]", "fail": "[FAIL]", "skip": "[skip]"}[self.status]
        return f"{mark} {self.name}: {self.detail}" + (f" -> {self.fix}" if self.fix else "")


def _run(args: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def check_python() -> Check:
    v = sys.version_info
    ok = v >= (3, 12)
    return Check("python", "ok" if ok else "fail", f"{sys.version.split()[0]} at {sys.executable}")


def check_vapoursynth() -> Check:
    try:
        import vapoursynth as vs

        return Check("vapoursynth", "ok", f"R{vs.core.version_number()} ({Path(vs.__file__).parent})")
    except Exception as e:  # an ImportError, or a core that cannot start
        return Check("vapoursynth", "fail", f"cannot import ({type(e).__name__}: {e})")


_PROBE = """import vapoursynth as vs
core = vs.core
assert hasattr(core, "uav"), "no uav namespace"
core.std.BlankClip(width=16, height=16, length=1).set_output()
"""


def check_vspipe() -> tuple[Check, Check]:
    """vspipe runs a script (it found Python), and a fresh core there has the uav namespace."""
    from vs_uav.media.render import find_vspipe

    vspipe = find_vspipe()
    if vspipe is None:
        return (Check("vspipe", "fail", "vspipe not found next to this Python or on PATH"),
                _plugin_check_in_python())
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "probe.vpy"
        script.write_text(_PROBE.replace('assert hasattr(core, "uav"), "no uav namespace"\n', ""), encoding="utf-8")
        try:
            plain = _run([vspipe, "--info", str(script)], timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            return Check("vspipe", "fail", f"{vspipe} does not run ({e})"), _plugin_check_in_python()
        if plain.returncode != 0:
            return (Check("vspipe", "fail", f"{vspipe} fails: {_last_line(plain.stderr + plain.stdout)}"),
                    _plugin_check_in_python())
        vspipe_ok = Check("vspipe", "ok", vspipe)
        script.write_text(_PROBE, encoding="utf-8")
        probe = _run([vspipe, "--info", str(script)], timeout=60)
        if probe.returncode == 0:
            return vspipe_ok, Check("plugin", "ok", f"core.uav autoloaded under vspipe ({_plugin_dir()})")
        return vspipe_ok, Check("plugin", "fail", f"no uav namespace in a fresh core under vspipe "
                                               f"(looked in {_plugin_dir()})")


def _plugin_dir() -> str:
    try:
        import vapoursynth as vs

        return str(Path(vs.__file__).parent / "plugins" / "uav")
    except Exception:
        return "site-packages/vapoursynth/plugins/uav"


def _plugin_check_in_python() -> Check:
    """Without vspipe: a fresh core in a fresh interpreter."""
    code = "import vapoursynth as vs, sys; sys.exit(0 if hasattr(vs.core, 'uav') else 3)"
    try:
        r = _run([sys.executable, "-c", code], timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Check("plugin", "fail", f"cannot start a fresh core ({e})")
    if r.returncode == 0:
        return Check("plugin", "ok", f"core.uav autoloaded ({_plugin_dir()})")
    return Check("plugin", "fail", f"no uav namespace in a fresh core (looked in {_plugin_dir()})")


def check_source_filter() -> Check:
    try:
        import vapoursynth as vs

        found = [ns for ns in ("bs", "lsmas", "ffms2") if hasattr(vs.core, ns)]
    except Exception:
        found = []
    if "bs" in found:
        return Check("source", "ok", "BestSource (core.bs) present" + (f"; also {', '.join(found[1:])}"
                                                                         if len(found) > 1 else ""))
    if found:
        return Check("source", "warn", f"no BestSource (uav upscale and generated scripts use core.bs); "
                                       f"found {', '.join(found)}")
    return Check("source", "fail", "no source filter (core.bs, core.lsmas or core.ffms2)")


def check_ffmpeg() -> tuple[Check, Check]:
    from vs_uav.media.encoder import CODECS

    ffmpeg = shutil.which("ffmpeg")
    wanted = {codec: spec[0][spec[0].index("-c:v") + 1] for codec, spec in CODECS.items()}
    if ffmpeg is None:
        return (Check("ffmpeg", "fail", "not on PATH"),
                Check("encoders", "fail", f"cannot check {', '.join(wanted.values())} without ffmpeg"))
    try:
        version = _run([ffmpeg, "-hide_banner", "-version"]).stdout.splitlines()[0].split(" Copyright")[0]
        listing = _run([ffmpeg, "-hide_banner", "-encoders"]).stdout
    except (OSError, subprocess.TimeoutExpired, IndexError) as e:
        return Check("ffmpeg", "fail", f"{ffmpeg} does not run ({e})"), Check("encoders", "fail", "unknown")
    have = {line.split()[1] for line in listing.splitlines() if len(line.split()) > 1}
    missing = [f"{enc} ({codec})" for codec, enc in wanted.items() if enc not in have]
    ffmpeg_check = Check("ffmpeg", "ok", f"{ffmpeg} ({version})")
    if not missing:
        return ffmpeg_check, Check("encoders", "ok", ", ".join(wanted.values()))
    # The default codec (x265) is required; the others only for the presets that use them.
    status: Status = "fail" if wanted["x265"] not in have else "warn"
    return ffmpeg_check, Check("encoders", status, f"missing {', '.join(missing)}")


def check_torch() -> tuple[Check, Check]:
    try:
        import torch
    except Exception as e:  # an ImportError, or a broken build failing on import
        return (Check("torch", "fail", f"cannot import ({type(e).__name__}: {e})"),
                Check("devices", "skip", "not checked: needs torch"))
    torch_check = Check("torch", "ok", f"{torch.__version__}")
    devices = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            bf16 = ", bf16" if torch.cuda.is_bf16_supported() else ""
            devices.append(f"cuda:{i} {p.name} {p.total_memory / 2**30:.1f} GiB{bf16}")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps (not used: vs-uav runs on CUDA or the CPU)")
    if any(d.startswith("cuda") for d in devices):
        return torch_check, Check("devices", "ok", "; ".join(devices))
    return torch_check, Check("devices", "warn", "; ".join(devices) or f"CPU only ({os.cpu_count()} cores)")


def check_model(model_dir: Optional[Path], manifests: Optional[Mapping] = None,
                log: Optional[Callable[[str], None]] = None) -> Check:
    from vs_uav.weights.download import staging_dir
    from vs_uav.weights.verify import WeightsError, parts_wanted, verify_folder

    model_dir = default_model_dir() if model_dir is None else model_dir
    # An interrupted `uav download` leaves its staging folder: the same command finishes it.
    unfinished = (f"; an interrupted download is in {staging_dir(model_dir.absolute())}"
                  if staging_dir(model_dir.absolute()).is_dir() else "")
    if not model_dir.is_dir():
        return Check("model", "fail", f"{model_dir}: model folder not found{unfinished}")
    present = [p for p in parts_wanted() if p not in ("vae_video", "propagator")]
    optional = []
    if (model_dir / LAYOUT["vae_video"].config).exists():
        present.append("vae_video")
    else:
        optional.append("no video VAE (vae='video' unavailable)")
    if (model_dir / "propagator").is_dir():
        present.append("propagator")
    else:
        optional.append("no RAFT weights (flow='dis' is used)")
    try:
        verify_folder(model_dir, manifests, present, log=log)
    except WeightsError as e:
        return _not_verified(model_dir, present, e, unfinished)
    except ImportError as e:  # reading the weights needs torch and transformers
        return Check("model", "skip", f"{model_dir}: not verified: needs {e.name or 'torch'}")
    return Check("model", "warn" if optional else "ok",
                 f"{model_dir}: verified" + (f"; {'; '.join(optional)}" if optional else ""))


def _not_verified(folder: Path, parts: Sequence[str], error: Exception, unfinished: str) -> Check:
    """The model line when ``folder`` failed verification with ``error``. A damaged, missing or
    unparsable file is a failure (download again); a folder that is complete and readable and
    whose weights fit its own configs is another model than the manifests describe (a finetune,
    another size): it loads, so a warning, with --manifests as the advice."""
    from vs_uav.weights.folder import ModelLoadError, fits_config
    from vs_uav.weights.verify import Manifest, WeightsError, verify_folder

    try:  # the same checks against the folder's own keys and shapes: what is left is damage
        own = {part: Manifest(0, shapes) for part, shapes in _weight_shapes(folder, parts).items()}
        verify_folder(folder, own, parts)
    except WeightsError as e:
        return Check("model", "fail", f"{e}{unfinished}")
    try:  # the loader's own construction (on the meta device: no memory) and check
        for part in parts:
            fits_config(folder, part)
    except ModelLoadError as e:  # readable, but not a model vs-uav can load
        return Check("model", "fail", f"{e}{unfinished}")
    # verify_folder's message ends with its re-download advice, which is not the advice here.
    difference = str(error).split("; delete it and run")[0]
    return Check("model", "warn", f"{folder}: complete and readable, but not the official model ({difference})"
                                  f"{unfinished}", OTHER_MODEL_ADVICE)


def _weight_shapes(folder: Path, parts: Sequence[str]) -> dict[str, dict[str, tuple[int, ...]]]:
    """Keys and shapes of every weight file of ``parts`` (a WeightsError for a damaged one)."""
    from vs_uav.weights.folder import REDOWNLOAD, tensor_shapes

    found = {}
    for part in parts:
        for rel in LAYOUT[part].weights:
            if (folder / rel).is_file():
                found[part] = tensor_shapes(folder / rel, REDOWNLOAD)
    return found


def check_captioners(root: Optional[Path] = None) -> Check:
    """Which captioners are present and complete (files and the config checked; the weights'
    shapes verified by `uav download --captioner`): a warning when none is, as they are optional."""
    from vs_uav.weights.captioners import CAPTIONERS, captioner_dir, check_captioner_folder
    from vs_uav.weights.folder import WeightsError

    present, damaged = [], []
    for name, spec in CAPTIONERS.items():
        folder = captioner_dir(name, root)
        if not folder.exists():
            continue
        try:
            check_captioner_folder(folder, spec)
            present.append(name)
        except WeightsError as e:
            damaged.append(f"{name} ({e})")
    where = captioner_dir(next(iter(CAPTIONERS)), root).parent
    if damaged:
        return Check("captioners", "warn", f"damaged: {'; '.join(damaged)}")
    if not present:
        return Check("captioners", "warn", f"none in {where}")
    return Check("captioners", "ok", f"{', '.join(present)} in {where}")


def check_disk(model_dir: Optional[Path]) -> Check:
    where = default_model_dir() if model_dir is None else model_dir
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free / 2**30
    status: Status = "ok" if free >= MIN_FREE_GIB else "warn"
    return Check("disk", status, f"{free:.1f} GiB free at {where}")


def xcb_plugin() -> Optional[Path]:
    """PySide6's xcb platform plugin, found without importing Qt; None without PySide6."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("PySide6")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "Qt" / "plugins" / "platforms" / "libqxcb.so"


def check_qt(plugin: Optional[Path] = None, packages: Mapping[str, str] = QT_XCB_PACKAGES) -> Check:
    """The shared libraries that ``plugin`` (default: PySide6's xcb platform plugin) needs and the
    dynamic loader cannot find (``ldd``, which follows every dependency), with their packages."""
    if plugin is None:
        if not sys.platform.startswith("linux"):
            return Check("qt", "skip", f"not checked: the xcb platform plugin is for Linux (this is {sys.platform})")
        plugin = xcb_plugin()
        if plugin is None:
            return Check("qt", "skip", "not checked: PySide6 is not installed (the preset editor is optional)")
    if not plugin.is_file():
        return Check("qt", "warn", f"{plugin}: Qt's xcb platform plugin not found")
    ldd = shutil.which("ldd")
    if ldd is None:
        return Check("qt", "skip", f"not checked: no ldd to list the libraries of {plugin}")
    try:
        r = _run([ldd, str(plugin)], timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Check("qt", "skip", f"not checked: ldd does not run ({e})")
    if r.returncode != 0:
        return Check("qt", "warn", f"{plugin}: ldd cannot read it ({_last_line(r.stderr + r.stdout)})")
    missing = list(dict.fromkeys(line.split("=>")[0].strip() for line in r.stdout.splitlines()
                                 if line.rstrip().endswith("=> not found")))
    if not missing:
        return Check("qt", "ok", f"every library of the xcb platform plugin is present ({plugin})")
    known = list(dict.fromkeys(packages[lib] for lib in missing if lib in packages))
    unknown = [lib for lib in missing if lib not in packages]
    detail = f"{plugin} cannot load: missing {', '.join(missing)}"
    if known:
        detail += f"; `apt-get install {' '.join(known)}`"
    if unknown:
        detail += f"; no known package for {', '.join(unknown)}"
    return Check("qt", "warn", detail)


def check_cluster(timeout: float = 2.0) -> Check:
    """Whether Ray (the optional ``cluster`` extra) can be imported, without importing it, and
    which cluster a bare ``--cluster`` reaches: ``$RAY_ADDRESS``, which must answer (a TCP
    connection within ``timeout`` seconds: the address is the user's), else a local instance
    with this machine's CPUs and GPUs."""
    import importlib.util
    import socket

    from vs_uav.app.cluster import ClusterOptions, local_cpus, default_address, ray_available

    try:
        found = importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        found = False
    version = ray_available()
    if not found or version is None:
        return Check("cluster", "warn", "Ray is not installed: uav upscale --cluster is unavailable")
    address = default_address()
    if address == "local":
        cpus, gpus = local_cpus(), _visible_gpus()
        workers = "one worker per GPU" if gpus else "one CPU worker, --workers N for more"
        return Check("cluster", "ok", f"Ray {version}; a bare --cluster starts a local Ray instance on 127.0.0.1 "
                                      f"with {cpus} CPU{'s' if cpus != 1 else ''} and {gpus} GPU"
                                      f"{'s' if gpus != 1 else ''} ({workers})")
    try:
        ClusterOptions(address)
    except ValueError as e:
        return Check("cluster", "warn", f"Ray {version}; RAY_ADDRESS={str(e).removeprefix('--cluster ')}")
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        why = "no answer within {:g} s".format(timeout) if isinstance(e, TimeoutError) else (e.strerror or str(e))
        return Check("cluster", "warn", f"Ray {version}; a bare --cluster joins RAY_ADDRESS={address}, which does "
                                        f"not answer ({why})")
    return Check("cluster", "ok", f"Ray {version}; a bare --cluster joins RAY_ADDRESS={address}, which answers")


def _visible_gpus() -> int:
    """The CUDA devices torch sees when the doctor already imported it (check_torch), else those
    the NVIDIA driver lists, as many as CUDA_VISIBLE_DEVICES lets through (no torch import)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            return torch.cuda.device_count()
        except Exception:  # noqa: BLE001 - a broken CUDA: none usable
            return 0
    gpus = Path("/proc/driver/nvidia/gpus")
    count = len(list(gpus.iterdir())) if gpus.is_dir() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        count = min(count, len([d for d in visible.split(",") if d.strip() and not d.strip().startswith("-")]))
    return count


def _guarded(names: Sequence[str], check: Callable[[], Union[Check, tuple[Check, ...]]]) -> list[Check]:
    """The lines of ``check``; a check that crashes is a failing line, and the others still run."""
    try:
        result = check()
    except Exception as e:  # a bug or an unforeseen breakage must not hide the remaining checks
        return [Check(name, "fail", f"the check itself failed ({type(e).__name__}: {e})") for name in names]
    return list(result) if isinstance(result, tuple) else [result]


def run_checks(model_dir: Optional[Path] = None, manifests: Optional[Mapping] = None,
               log: Optional[Callable[[str], None]] = None) -> list[Check]:
    """Every check (one line per name of :data:`FIXES`), in the order a user would fix them."""
    checks = _guarded(["python"], check_python) + _guarded(["vapoursynth"], check_vapoursynth)
    if checks[-1].status == "ok":
        checks += _guarded(["vspipe", "plugin"], check_vspipe) + _guarded(["source"], check_source_filter)
    else:
        checks += [Check(name, "skip", "not checked: needs VapourSynth") for name in ("vspipe", "plugin", "source")]
    checks += _guarded(["ffmpeg", "encoders"], check_ffmpeg) + _guarded(["torch", "devices"], check_torch)
    checks += _guarded(["model"], lambda: check_model(model_dir, manifests, log))
    checks += _guarded(["disk"], lambda: check_disk(model_dir))
    checks += _guarded(["captioners"], check_captioners)
    checks += _guarded(["qt"], check_qt)
    checks += _guarded(["cluster"], check_cluster)
    return checks
