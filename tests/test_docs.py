"""The README's generated sections are current, and its commands are real ones."""

from __future__ import annotations

import re
import shlex

import pytest
from conftest import REPO

from vs_uav.app import cli, docs
from vs_uav.app.doctor import FIXES
from vs_uav.media.encoder import ENCODER_SETTINGS
from vs_uav.settings import SETTINGS

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_generated_sections_are_up_to_date():
    assert docs.render(README) == README, "run: .venv/bin/python -m vs_uav.app.docs --write"
    assert docs.main(["--check"]) == 0


def test_every_parameter_and_every_doctor_fix_is_documented():
    for s in SETTINGS:
        assert f"| `{s.name}` |" in README
    for s in ENCODER_SETTINGS:
        assert f"| `--{s.name.replace('_', '-')}` |" in README
    for name, fix in FIXES.items():
        assert f"| `{name}` | {fix.replace('|', chr(92) + '|')} |" in README


def test_stale_sections_are_detected(tmp_path):
    stale = tmp_path / "README.md"
    stale.write_text(README.replace("| `noise_level` |", "| `noise_lvl` |"), encoding="utf-8")
    assert docs.main(["--check", "--readme", str(stale)]) == 1
    assert docs.main(["--write", "--readme", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == README
    with pytest.raises(ValueError, match="params:start"):
        docs.render("# no markers\n")


def test_the_getting_started_commands_exist():
    block = re.search(r"## Getting started.*?```sh\n(.*?)```", README, re.S).group(1)
    commands = [shlex.split(line.split("#")[0]) for line in block.splitlines() if line.startswith("uav ")]
    assert [c[1] for c in commands][:3] == ["doctor", "selftest", "download"]
    parser = cli.build_parser()
    for argv in commands:
        args = parser.parse_args(argv[1:])  # every option as written is accepted
        assert args.func is getattr(cli, f"cmd_{argv[1]}"), argv  # ... by the command it names
    assert "S-Lab License 1.0" in README and "non-commercial" in README


def test_the_library_example_runs():
    """The README's Library snippet, as written, on the tiny reference model."""
    import torch
    from conftest import MODEL_DIR

    code = re.search(r"## Library\n+```python\n(.*?)```", README, re.S).group(1)
    assert '"path/to/upscale_a_video"' in code
    video = torch.rand(1, 3, 3, 16, 16) * 2 - 1
    scope = {"video": video}
    exec(code.replace('"path/to/upscale_a_video"', repr(str(MODEL_DIR))), scope)
    assert scope["out"].frames.shape == (1, 3, 3, 64, 64)
    assert scope["out"].frames.abs().max() <= 1


def test_shell_scripts_are_executable_in_git():
    """`bash bench/device.sh` and `./bench/device.sh` both work from a fresh clone."""
    import subprocess

    listing = subprocess.run(["git", "ls-files", "-s", "--", "bench/*.sh", "scripts/*.sh"], cwd=REPO, check=True,
                             capture_output=True, text=True).stdout.splitlines()
    scripts = {line.split("\t")[1]: line.split()[0] for line in listing}
    assert "bench/device.sh" in scripts
    assert {path: mode for path, mode in scripts.items() if mode != "100755"} == {}


def test_the_readme_says_one_thing_about_threads():
    """Thread count: the README's promises agree (CPU float sums depend on it)."""
    text = " ".join(README.split())
    assert "never on the thread count" not in text
    assert "depend on the thread count" in text or "number of torch threads" in text


def _design_bullet(title: str) -> str:
    start = README.index(f"- **{title}")
    ends = [i for i in (README.find("\n- **", start + 1), README.find("\n## ", start)) if i > 0]
    return README[start:min(ends)]


def _resolve_path(bullet: str) -> list[str]:
    """Each name a design path lists, resolved: ``vs_uav.x.y`` names by import, bare names
    (``_prepare``, ``RunFolder.verify``) in the module named last before them; the misses."""
    import importlib

    missing, module = [], None
    for name in re.findall(r"`([^`]+)`", bullet):
        if "/" in name:
            missing += [] if (REPO / name).exists() else [name]
            continue
        if not re.fullmatch(r"[A-Za-z_][\w.]*", name) or name.startswith(("core.uav", "uav ")):
            continue  # a call with its arguments, e.g. settings.check_model(*engine.limits())
        parts, obj = name.split("."), None
        if parts[0] in ("vs_uav", "vs_uav_gui"):
            for i in range(len(parts), 0, -1):
                try:
                    obj, module = importlib.import_module(".".join(parts[:i])), importlib.import_module(
                        ".".join(parts[:i]))
                    rest = parts[i:]
                    break
                except ImportError:
                    continue
        else:
            obj, rest = module, parts
        try:
            for attr in rest:
                obj = getattr(obj, attr)
        except AttributeError:
            missing.append(name)
    return missing


@pytest.mark.parametrize("title", ["One parameter", "One job"])
def test_the_design_paths_name_functions_that_exist(title):
    bullet = _design_bullet(title)
    assert len(re.findall(r"`([^`]+)`", bullet)) > 12
    assert _resolve_path(bullet) == []
    assert _resolve_path("`vs_uav.app.job.run_job` → `_no_such_step`") == ["_no_such_step"]  # it can fail
