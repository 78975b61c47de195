"""Make the wheels carried in bench/wheels/ importable, offline and without pip.

    python3 bench/carried.py WHEELS SITE

Unpacks into SITE (to put first on PYTHONPATH) the wheels this interpreter can use, for each
group whose check fails with what is installed: ``test`` (pytest) and ``model`` (transformers'
CLIP tokenizer and text model, safetensors). A group is unpacked whole, so its versions agree.
Prints one line per group to stderr; exits 0 even when a group cannot be made to work (the
caller's checks say what is then skipped).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import zipfile
from pathlib import Path

CHECKS = {
    "test": "import pytest",
    "model": "import safetensors.torch; from transformers import CLIPTextModel, CLIPTokenizer",
}
TEST_ONLY = {"pytest", "pluggy", "iniconfig", "pygments", "exceptiongroup", "tomli"}


def works(check: str, site: Path) -> bool:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    flags = ["-S"] if sys.flags.no_site else []  # the same interpreter, as it was started
    return subprocess.run([sys.executable, *flags, "-c", check], env=env, capture_output=True).returncode == 0


def usable(wheel: Path) -> int:
    """How well this interpreter matches the wheel's tags: 0 not at all, higher is better."""
    parts = wheel.name[:-4].split("-")
    py, abi, plat = parts[-3], parts[-2], parts[-1]
    ours = f"cp{sys.version_info.major}{sys.version_info.minor}"
    if plat != "any" and not (sys.platform == "linux" and platform.machine() in plat):
        return 0
    best = 0
    for tag in py.split("."):
        if tag == ours and abi != "abi3":
            best = max(best, 3)
        elif abi == "abi3" and tag.startswith("cp3") and int(tag[3:]) <= sys.version_info.minor:
            best = max(best, 2)
        elif tag in ("py3", "py2.py3") or tag.startswith("py3"):
            best = max(best, 1)
    return best


def main() -> int:
    wheels, site = Path(sys.argv[1]), Path(sys.argv[2])
    site.mkdir(parents=True, exist_ok=True)
    chosen: dict[str, tuple[int, Path]] = {}
    for w in sorted(wheels.glob("*.whl")):
        score = usable(w)
        project = w.name.split("-")[0].lower()
        if score and score > chosen.get(project, (0, w))[0]:
            chosen[project] = (score, w)
    for group, check in CHECKS.items():
        if works(check, site):
            print(f"carried: {group}: already importable", file=sys.stderr)
            continue
        members = [w for p, (_, w) in chosen.items() if (p in TEST_ONLY) == (group == "test")]
        for w in members:
            with zipfile.ZipFile(w) as z:
                z.extractall(site)
        state = "ok" if works(check, site) else "still NOT importable (its tests and benchmarks will be skipped)"
        print(f"carried: {group}: unpacked {len(members)} wheels from {wheels}: {state}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
