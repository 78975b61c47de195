"""The README's generated sections are current, and its commands are real ones."""

from __future__ import annotations

import re
import shlex

import pytest

from conftest import REPO
from vs_uav import cli, docs
from vs_uav.doctor import FIXES
from vs_uav.encoder import ENCODER_SETTINGS
from vs_uav.settings import SETTINGS

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_generated_sections_are_up_to_date():
    assert docs.render(README) == README, "run: .venv/bin/python -m vs_uav.docs --write"
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
        assert callable(args.func)
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
