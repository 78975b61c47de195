"""Golden files for the generated .vpy scripts and commands, awkward paths included.

Regenerate after an intended change with:
    UAV_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_script_golden.py
and review the diff of tests/golden/.
"""

from __future__ import annotations

import ast
import os
import shlex
from fractions import Fraction
from pathlib import Path

import pytest

from vs_uav.app import presets
from vs_uav.app.plan import plan_preset_render
from vs_uav.app.presets import Preset
from vs_uav.media.encoder import EncoderSettings
from vs_uav.media.output import path_arg
from vs_uav.media.probe import MediaInfo, VideoFormat

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
    result = plan_preset_render(presets.load(name), AWKWARD)
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
    monkeypatch.chdir("/")  # relative paths become absolute against it: the goldens stay the same
    result = plan_preset_render(presets.load("fast-preview"), NASTY["source"], NASTY["script"], NASTY["output"])
    check("nasty-paths.vpy", result.script)
    check("nasty-paths.sh", result.command + "\n")
    # The newline in the path stays inside comments and string literals.
    assert source_literal(result.script) == str(NASTY["source"])
    assert all(line.startswith("#") for line in result.script.split("import vapoursynth")[0].splitlines())
    vspipe, ffmpeg = pipe_sides(result.command)
    assert vspipe[3] == "/-script.vpy"  # absolute: not an option
    assert ffmpeg[-1] == "/http:out.mkv"  # absolute: not a protocol
    assert ffmpeg[ffmpeg.index("-i", 4) + 1] == str(NASTY["source"])


def test_path_arguments_are_never_options_or_protocols():
    # What the runner passes as it is (a caller's relative output, its partial file).
    assert path_arg(Path("-script.vpy")) == "./-script.vpy"
    assert path_arg(Path("http:out.mkv"), ffmpeg=True) == "file:http:out.mkv"
    assert path_arg(Path("/media/http:out.mkv"), ffmpeg=True) == "/media/http:out.mkv"


def test_relative_paths_become_absolute_against_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = plan_preset_render(Preset("defaults"), Path("in.mp4"), Path("sub/s.vpy"), Path("../o.mkv"))
    assert (result.script_path, result.output) == (tmp_path / "sub" / "s.vpy", tmp_path.parent / "o.mkv")
    assert source_literal(result.script) == str(tmp_path / "in.mp4")
    vspipe, ffmpeg = pipe_sides(result.command)
    assert vspipe[3] == str(tmp_path / "sub" / "s.vpy") and ffmpeg[-1] == str(tmp_path.parent / "o.mkv")
    assert ffmpeg[ffmpeg.index("-i", 4) + 1] == str(tmp_path / "in.mp4")
    assert plan_preset_render(Preset("defaults"), Path("in.mp4")).script_path == tmp_path / "in.uav.vpy"


def test_defaults_give_a_plain_call(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    result = plan_preset_render(Preset("defaults"), Path("in.mp4"))
    check("defaults.vpy", result.script)
    assert "clip = core.uav.Upscale(clip)  # all settings at their defaults" in result.script


# A probed source as vs_uav.media.probe describes it (no file: the goldens stay the same).
TAGGED = MediaInfo(width=48, height=32, frames=6, format=VideoFormat("YUV", 10), fps=Fraction(24000, 1001),
                   matrix=1, primaries=1, transfer=1, range="pc", sar=Fraction(32, 27), time_base=Fraction(1, 1000),
                   times=(0, 42, 83, 125, 208, 292))  # a variable frame rate


def test_the_command_carries_the_sources_format_tags_and_timestamps():
    result = plan_preset_render(Preset("tagged", encoder=EncoderSettings(codec="ffv1")), AWKWARD, media=TAGGED)
    check("tagged-ffv1.vpy", result.script)
    check("tagged-ffv1.sh", result.command + "\n")
    _, ffmpeg = pipe_sides(result.command)
    options = {word: ffmpeg[i + 1] for i, word in enumerate(ffmpeg[:-1]) if word.startswith("-")}
    assert {k: options[k] for k in ("-colorspace", "-color_primaries", "-color_trc", "-color_range", "-pix_fmt")} \
        == {"-colorspace": "bt709", "-color_primaries": "bt709", "-color_trc": "bt709", "-color_range": "pc",
            "-pix_fmt": "yuv444p10le"}
    assert "setsar=32/27" in options["-vf"] and "settb=1/1000" in options["-vf"]
    assert options["-fps_mode:v"] == "passthrough" and result.note == ""
    assert "core.resize" not in result.script  # ffv1 takes 10-bit 4:4:4 as it is


def test_rgb_for_a_codec_without_rgb_is_converted_in_the_script_and_said():
    rgb = MediaInfo(width=48, height=32, frames=6, format=VideoFormat("RGB", 8), fps=Fraction(25), matrix=0,
                    range="pc", sar=Fraction(1))
    result = plan_preset_render(Preset("rgb", encoder=EncoderSettings(codec="x264")), AWKWARD, media=rgb)
    check("rgb-x264.vpy", result.script)
    check("rgb-x264.sh", result.command + "\n")
    assert result.note == "x264: 8-bit RGB source encoded as 8-bit 4:4:4 (libx264 has no RGB)"
    assert "-colorspace bt709 " in result.command and "-pix_fmt yuv444p " in result.command
    compile(result.script, "rgb-x264.vpy", "exec")
