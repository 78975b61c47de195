"""Golden files for the generated .vpy scripts and commands, awkward paths included.

Regenerate after an intended change with:
    UAV_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_script_golden.py
and review the diff of tests/golden/.
"""

from __future__ import annotations

import ast
import os
import shlex
from pathlib import Path

import pytest

from vs_uav import presets
from vs_uav.script import plan

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("UAV_UPDATE_GOLDEN") == "1"

# Spaces, both quote kinds, a backslash, '&', '$', non-ASCII; absolute so the goldens are stable.
AWKWARD = Path("/media/My Films/l'été \"1953\" & $HOME \\ 中文.mp4")
# Where shell quoting alone is not enough: a newline, a leading dash, an ffmpeg protocol look-alike.
NASTY = {"source": Path("/tmp/line\nbreak.mp4"), "script": Path("-script.vpy"), "output": Path("http:out.mkv")}


def check(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"{path} missing: run with UAV_UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8"), f"{name} differs from its golden (UAV_UPDATE_GOLDEN=1)"


def source_literal(script: str) -> str:
    """The path the script hands BestSource, as Python reads it."""
    for node in ast.walk(ast.parse(script)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "VideoSource":
            return ast.literal_eval(node.args[0])
    raise AssertionError("no VideoSource call")


def pipe_sides(command: str) -> tuple[list[str], list[str]]:
    words = shlex.split(command)
    bar = words.index("|")  # a quoted '|' in a path would be a word of its own, not equal to '|'
    return words[:bar], words[bar + 1:]


@pytest.mark.parametrize("name", sorted(presets.available()))
def test_script_and_command_of_every_shipped_preset(name, monkeypatch, tmp_path):
    monkeypatch.setenv("UAV_CONFIG_DIR", str(tmp_path))  # shipped presets only
    result = plan(presets.load(name), AWKWARD)
    check(f"{name}.vpy", result.script)
    check(f"{name}.sh", result.command + "\n")
    assert source_literal(result.script) == str(AWKWARD)
    vspipe, ffmpeg = pipe_sides(result.command)
    assert vspipe == ["vspipe", "-c", "y4m", str(AWKWARD.with_name(AWKWARD.stem + ".uav.vpy")), "-"]
    assert ffmpeg[ffmpeg.index("-i", 4) + 1] == str(AWKWARD)  # the audio comes from the source
    assert ffmpeg[-1] == str(result.output)
    compile(result.script, "golden.vpy", "exec")


def test_paths_that_quoting_alone_does_not_protect(tmp_path, monkeypatch):
    monkeypatch.setenv("UAV_CONFIG_DIR", str(tmp_path))
    result = plan(presets.load("fast-preview"), NASTY["source"], NASTY["script"], NASTY["output"])
    check("nasty-paths.vpy", result.script)
    check("nasty-paths.sh", result.command + "\n")
    # The newline in the path stays inside comments and string literals.
    assert source_literal(result.script) == str(NASTY["source"])
    assert all(line.startswith("#") for line in result.script.split("import vapoursynth")[0].splitlines())
    vspipe, ffmpeg = pipe_sides(result.command)
    assert vspipe[3] == "./-script.vpy"  # not an option
    assert ffmpeg[-1] == "file:http:out.mkv"  # not a protocol
    assert ffmpeg[ffmpeg.index("-i", 4) + 1] == str(NASTY["source"])


def test_defaults_give_a_plain_call(tmp_path, monkeypatch):
    from vs_uav.presets import Preset

    result = plan(Preset("defaults"), Path("in.mp4"))
    check("defaults.vpy", result.script)
    assert "clip = core.uav.Upscale(clip)  # all settings at their defaults" in result.script
