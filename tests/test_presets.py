"""Presets: the shipped files, user overrides, exact round trips and one-line errors; the
`--preset` option of `uav script`; no torch behind the GUI, the presets and the scripts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_video
from setting_errors import row

from vs_uav.app import cli, presets
from vs_uav.app.presets import Preset, PresetError
from vs_uav.media.encoder import EncoderSettings
from vs_uav.settings import UpscaleSettings

SHIPPED = ["ai-generated", "animation", "archival-lossless", "fast-preview", "old-film"]


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("UAV_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path / "config"


def test_the_shipped_presets_are_found():
    assert list(presets.available()) == SHIPPED
    assert all(origin == "shipped" for origin, _ in presets.available().values())


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_preset_round_trips_exactly(name, tmp_path):
    first = presets.load(name)
    path = presets.available()[name][1]
    # The shipped file is the canonical text: load then dump gives it back byte for byte.
    assert presets.dumps(first) == path.read_text(encoding="utf-8")
    saved = presets.save(first, tmp_path / f"{name}.toml")
    again = presets.load(saved)
    assert again == first and presets.dumps(again) == presets.dumps(first)
    assert first.description


@pytest.mark.parametrize("name", [n for n in SHIPPED if n != "fast-preview"])
def test_shipped_values_follow_the_official_recommendations(name):
    s = presets.load(name).settings
    assert 100 <= s.noise_level <= 150 and 5 <= s.guidance_scale <= 9 and 20 <= s.steps <= 30
    assert all(p >= s.steps * 2 // 3 for p in s.propagation_steps)  # late steps only


def test_fast_preview_and_archival_do_what_their_names_say():
    fast, archive = presets.load("fast-preview"), presets.load("archival-lossless")
    assert fast.settings.steps < 20 and fast.settings.chunk_size == 8
    assert archive.encoder.codec == "ffv1" and archive.encoder.audio == "copy"


def test_user_presets_override_shipped_ones_by_name(config_dir):
    mine = Preset("old-film", UpscaleSettings(noise_level=130), EncoderSettings(codec="prores"), "mine")
    path = presets.save(mine)
    assert path == config_dir / "presets" / "old-film.toml"
    assert presets.available()["old-film"] == ("user", path)
    assert presets.load("old-film") == mine and presets.load("old-film").origin == "user"
    presets.delete("old-film")
    assert presets.load("old-film").settings.noise_level == 100  # the shipped one again
    with pytest.raises(PresetError, match="'old-film' is shipped with vs-uav and cannot be deleted"):
        presets.delete("old-film")


def test_awkward_values_survive_a_round_trip(tmp_path):
    p = Preset("Été 1953", UpscaleSettings(prompt='a "quoted" \\ back\tslash\nnewline é 中', seed=2**62,
                                         propagation_steps=[0, 29], scene_change=False, guidance_scale=1e-3),
               EncoderSettings(codec="prores", audio="none"), "déjà\nvu \t 'x' \"y\" \\")
    assert presets.save(p).name == "Été 1953.toml" and presets.load("Été 1953") == p  # name = file name


@pytest.mark.parametrize("text", ["a\x00b", "a\rb", "a\x01b", "a\u2028b", "a\x85b", "\u202eevil"])
def test_control_characters_in_a_description_are_refused_in_one_line(tmp_path, text):
    """They would reach a generated script's comment or a terminal: refused when made and when read."""
    with pytest.raises(PresetError, match=r"^description holds the control character .*; accepted: printable text"):
        Preset("x", description=text)
    toml = "schema_version = 1\ndescription = " + json.dumps(text) + "\n"
    with pytest.raises(PresetError) as err:
        presets.parse(toml, tmp_path / "p.toml")
    assert "\n" not in str(err.value) and "control character" in str(err.value)


@pytest.mark.parametrize("name", ["abc\n", "abc\r", "a\x00b", "x\u2028"])
def test_a_preset_name_with_a_line_end_or_control_character_is_refused(name):
    with pytest.raises(PresetError, match=r"^preset name .*; accepted: 1-64 letters"):
        Preset(name)


def test_a_preset_nested_thousands_deep_is_one_line(tmp_path):
    text = "schema_version = 1\n[upscale]\nprompt = " + "[" * 5000 + "]" * 5000 + "\n"
    with pytest.raises(PresetError, match=r"nested more than 8 deep; accepted: a preset"):
        presets.parse(text, tmp_path / "deep.toml")


def write(tmp_path: Path, text: str, name: str = "bad.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("body, message", [
    ("schema_version = 1\n[upscale]\nnoise_level = 400\n", "upscale." + row(noise_level=400)[1]),
    ('schema_version = 1\n[upscale]\nsteps = "30"\n', "upscale.steps='30'; accepted: an integer in [1, 1000]"),
    ('schema_version = 1\n[upscale]\nvae = "4d"\n', "upscale." + row(vae="4d")[1]),
    ('schema_version = 1\n[encoder]\ncodec = "av1"\n',
     "encoder.codec='av1'; accepted: 'x265', 'x264', 'ffv1', 'prores'"),
    ("schema_version = 1\n[upscale]\nsteps = 20\npropagation_steps = [24]\n",
     "upscale.propagation_steps=[24]; accepted: distinct step indices in [0, 19] (steps=20)"),
    ("schema_version = 1\n[upscale]\nstepz = 3\n",
     "unknown key upscale.stepz=3; accepted: prompt, prompt_suffix, "),
    ("schema_version = 1\ncolour = 3\n", "unknown key colour=3; accepted: schema_version, description"),
    ("schema_version = 1\nupscale = 3\n", "upscale=3; accepted: a table [upscale]"),
    ("schema_version = 2\n", "schema_version=2; accepted: up to 1 (the file is from a newer vs-uav"),
    ("[upscale]\nsteps = 3\n", "schema_version missing; accepted: an integer in [0, 1]"),
    ("schema_version = 1\n[upscale\n", "not valid TOML"),
])
def test_bad_preset_files_are_refused_in_one_line_naming_file_key_value_accepted(tmp_path, body, message):
    path = write(tmp_path, body)
    with pytest.raises(PresetError) as err:
        presets.load(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and message in text, text
    assert "\n" not in text


def test_schema_0_is_migrated(tmp_path):
    # Schema 0 called the x265 speed [encoder] 'preset' and the guidance scale 'guidance'.
    path = write(tmp_path, 'schema_version = 0\n[upscale]\nguidance = 7.5\n[encoder]\npreset = "slow"\n', "old.toml")
    p = presets.load(path)
    assert (p.settings.guidance_scale, p.encoder.speed) == (7.5, "slow")
    assert "speed = \"slow\"" in presets.dumps(p) and "schema_version = 1" in presets.dumps(p)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(PresetError, match="unknown preset 'nope'; accepted: ai-generated, animation, "):
        presets.load("nope")
    with pytest.raises(PresetError, match="preset name '../x'"):
        Preset("../x")


def test_uav_script_with_a_preset_and_overrides(tmp_path, capsys):
    source = tiny_video(tmp_path / "my clip.mp4")
    script = tmp_path / "out.vpy"
    assert cli.main(["script", str(source), "-o", str(tmp_path / "o.mkv"), "--script", str(script),
                     "--preset", "archival-lossless", "--noise-level", "110", "--codec", "prores"]) == 0
    text = script.read_text(encoding="utf-8")
    assert "noise_level=110," in text and "vae='video'," in text and "color_fix='wavelet'," in text
    assert "# Preset: archival-lossless" in text
    command = capsys.readouterr().out
    assert "-c:v prores_ks" in command and f"'{source}'" in command


def test_uav_script_defaults_to_files_next_to_the_source(tmp_path, capsys):
    source = tiny_video(tmp_path / "clip é.mp4")
    assert cli.main(["script", str(source), "--preset", "archival-lossless"]) == 0
    script = tmp_path / "clip é.uav.vpy"
    assert "core.uav.Upscale(" in script.read_text(encoding="utf-8")
    command = capsys.readouterr().out
    assert f"'{script}'" in command and command.rstrip().endswith(f"'{tmp_path / 'clip é.uav.mkv'}'")


def test_uav_script_reports_a_bad_preset_in_one_line(tmp_path, capsys):
    bad = write(tmp_path, "schema_version = 1\n[upscale]\nnoise_level = 999\n")
    with pytest.raises(SystemExit) as err:
        cli.main(["script", "in.mp4", "-o", "o.mkv", "--script", str(tmp_path / "s.vpy"), "--preset", str(bad)])
    assert str(err.value) == f"uav script: {bad}: upscale.noise_level=999; accepted: an integer in [0, 350]"
    assert not (tmp_path / "s.vpy").exists()


def test_gui_presets_and_scripts_do_not_import_torch():
    code = ("import sys, vs_uav.app.presets, vs_uav.media.script, vs_uav.app.cli, vs_uav_gui, vs_uav_gui.window; "
            "from vs_uav_gui.window import probe_video; probe_video(__import__('pathlib').Path("
            f"{str(Path(__file__).resolve().parent.parent.parent / 'shared' / 'videos' / 'aigc_1.mp4')!r})); "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_a_presets_propagation_steps_that_do_not_fit_steps_name_the_preset_and_how_to_clear_them(tmp_path, capsys):
    # old-film propagates at 17,18,19 of 20 steps: --steps 10 over it leaves them out of range.
    args = ["script", str(tiny_video(tmp_path / "in.mp4")), "-o", str(tmp_path / "o.mkv"), "--script",
            str(tmp_path / "s.vpy"), "--preset", "old-film", "--steps", "10"]
    with pytest.raises(SystemExit) as err:
        cli.main(args)
    assert str(err.value) == ("uav script: propagation_steps=17,18,19 from preset 'old-film' does not fit --steps 10; "
                              "accepted: --propagation-steps with step indices in [0, 9], or --propagation-steps "
                              "none to clear it")
    assert not (tmp_path / "s.vpy").exists()
    for cleared in ("none", "None", ""):  # what the message says works, and the empty list as before
        assert cli.main([*args, "--propagation-steps", cleared]) == 0
        assert "propagation_steps=" not in (tmp_path / "s.vpy").read_text(encoding="utf-8")
    assert cli.main([*args, "--propagation-steps", "7,9"]) == 0
    assert "propagation_steps=[7, 9]," in (tmp_path / "s.vpy").read_text(encoding="utf-8")
    capsys.readouterr()
    # Given on the command line, the values are the user's own: the settings model's message.
    with pytest.raises(SystemExit) as err:
        cli.main([*args[:-2], "--steps", "10", "--propagation-steps", "12"])
    assert str(err.value) == "uav script: propagation_steps=[12]; accepted: distinct step indices in [0, 9] (steps=10)"
