"""The one settings model: validation, defaults and the plugin signature derived from it."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import tiny_video
from setting_errors import BAD_SETTINGS, row_id

from vs_uav.settings import SETTINGS, SETTINGS_BY_NAME, UpscaleSettings, vs_signature


def test_defaults_follow_the_official_inference():
    s = UpscaleSettings()
    assert (s.steps, s.guidance_scale, s.noise_level, s.propagation_steps) == (30, 6.0, 120, [])
    assert s.negative_prompt == "blur, worst quality"
    assert UpscaleSettings(prompt="a koala in a tree").full_prompt == "a koala in a tree, best quality, extremely detailed"
    assert UpscaleSettings(prompt="a koala, ").full_prompt == "a koala, best quality, extremely detailed"


@pytest.mark.parametrize("kwargs, message", BAD_SETTINGS, ids=[row_id(r) for r in BAD_SETTINGS])
def test_bad_values_are_refused_with_the_accepted_range(kwargs, message):
    """The whole table, as the model says it: one line, the value as given, what is accepted."""
    with pytest.raises(ValueError) as e:
        UpscaleSettings.from_kwargs(**kwargs)
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)


def test_values_are_normalised():
    s = UpscaleSettings(prompt=b"koala", guidance_scale=7, propagation_steps=[28, 24], steps=30.0, scene_change=0)
    assert (s.prompt, s.guidance_scale, s.propagation_steps, s.steps, s.scene_change) == ("koala", 7.0, [24, 28], 30, False)
    assert isinstance(s.guidance_scale, float) and isinstance(s.steps, int)


def test_unknown_keyword_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"unknown parameter 'stepz'; accepted: prompt, prompt_suffix, .*seek"):
        UpscaleSettings.from_kwargs(stepz=3)


def test_signature_declares_every_setting_with_its_vapoursynth_type():
    sig = vs_signature()
    assert sig.startswith("clip:vnode;")
    assert "propagation_steps:float[]:opt:empty;" in sig and "guidance_scale:float:opt;" in sig and "prompt:data:opt;" in sig
    # Integers travel as float (exact within their ranges), the 64-bit seed as its decimal text.
    assert "steps:float:opt;" in sig and "seed:data:opt;" in sig and ":int" not in sig
    assert sig.count(";") == len(SETTINGS) + 1
    assert all(s.help and s.group for s in SETTINGS)
    assert SETTINGS_BY_NAME["noise_level"].max == 350


def test_settings_do_not_import_torch():
    code = "import sys, vs_uav.settings; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_choices_are_the_implementations_choices():
    """The settings model lists exactly what the code behind each choice implements."""
    from vs_uav.core.color import COLOR_FIX_CHOICES
    from vs_uav.core.flow import METHODS
    from vs_uav.settings import SETTINGS_BY_NAME
    from vs_uav.weights.folder import VAE_CHOICES

    assert SETTINGS_BY_NAME["vae"].choices == VAE_CHOICES
    assert SETTINGS_BY_NAME["flow"].choices == ("auto", *METHODS)
    assert SETTINGS_BY_NAME["color_fix"].choices == COLOR_FIX_CHOICES


@pytest.mark.parametrize("name, sent, arrives", [
    ("steps", 12.0, 12), ("steps", 2.7, 2.7), ("scene_change", 1.0, 1), ("noise_level", 1e300, 1e300),
    ("seed", "9223372036854775807", 2**63 - 1), ("seed", "9223372036854775808", 2**63), ("seed", "1.9", 1.9),
    ("seed", "True", True), ("seed", "many", "many"), ("seed", b"5", 5),
    ("propagation_steps", 4.0, [4]), ("propagation_steps", [3.0, 2.5], [3, 2.5]),
    ("prompt", b"koala", b"koala"), ("guidance_scale", 6.0, 6.0),
])
def test_values_from_the_plugin_are_turned_back_into_what_was_written(name, sent, arrives):
    """What VapourSynth hands Python for each declared type (float, or data for the seed:
    str(value)), back as the caller wrote it, so that check() sees 2.7 and 2**63 as such."""
    got = SETTINGS_BY_NAME[name].from_vs(sent)
    assert got == arrives and type(got) is type(arrives)


@pytest.mark.parametrize("argv, message", [
    (["--steps", "2.5"], "uav script: --steps '2.5': accepted: an integer in [1, 1000]"),
    (["--propagation-steps", "a,b"], "uav script: --propagation-steps 'a,b': accepted: integers separated by commas, "
                                     "e.g. 24,26,28"),
    (["--propagation-steps", "3,3"], "uav script: propagation_steps=[3, 3]; accepted: distinct step indices in "
                                     "[0, 29]"),
    (["--seed", "9223372036854775808"], "uav script: seed=9223372036854775808; accepted: an integer in "
                                        "[0, 9223372036854775807]"),
    (["--guidance-scale", "high"], "uav script: --guidance-scale 'high': accepted: a number in [0, 50]"),
    (["--crf", "1e3"], "uav script: --crf '1e3': accepted: an integer in [0, 51]"),
    (["--vae", "4d"], "uav script: vae='4d'; accepted: '3d', 'video'"),
])
@pytest.mark.parametrize("command", ["script", "upscale"])
def test_cli_options_are_refused_in_one_line_naming_option_value_and_accepted(tmp_path, capsys, argv, message,
                                                                              command):
    from vs_uav.app.cli import main

    script, source = tmp_path / "x.vpy", tmp_path / "in.mp4"
    source.write_bytes(b"")  # refused before it is read
    extra = ["--script", str(script)] if command == "script" else ["-o", str(tmp_path / "out.mkv")]
    with pytest.raises(SystemExit) as e:
        main([command, str(source), *extra, *argv])
    message = message.replace("uav script:", f"uav {command}:")
    assert str(e.value.code).startswith(message), e.value.code
    assert "\n" not in str(e.value.code) and "<lambda>" not in str(e.value.code)
    assert capsys.readouterr() == ("", "")  # not argparse's usage dump
    assert not script.exists() and not (tmp_path / "out.mkv").exists()


def test_cli_options_parse_what_they_show(tmp_path):
    from vs_uav.app.cli import main

    script = tmp_path / "x.vpy"
    assert main(["script", str(tiny_video(tmp_path / "in.mp4")), "--script", str(script), "--steps", "20", "--propagation-steps",
                 "17, 18,19", "--seed", str(2**63 - 1), "--guidance-scale", "7.5", "--no-scene-change"]) == 0
    text = script.read_text()
    assert "steps=20," in text and "propagation_steps=[17, 18, 19]," in text and f"seed={2**63 - 1}," in text
    assert "guidance_scale=7.5," in text and "scene_change=False," in text
    help_text = subprocess.run([sys.executable, "-m", "vs_uav", "upscale", "--help"], capture_output=True,
                               text=True).stdout
    assert "--steps INT" in help_text and "--propagation-steps N,N,..." in help_text and "{3d,video}" in help_text
    assert "lambda" not in help_text


# -- prompts longer than CLIP reads ---------------------------------------------------------------

@pytest.fixture(scope="module")
def prompt_encoder():
    from conftest import MODEL_DIR

    from vs_uav.engine.pipeline import UpscalePipeline

    return UpscalePipeline.from_pretrained(MODEL_DIR).model.prompt_encoder


def _ids(enc, text: str) -> list[int]:
    return enc.tokenizer(text, add_special_tokens=False, verbose=False).input_ids


@pytest.mark.parametrize("caption, words", [
    (" ".join(["an old hand-drawn cartoon of a koala, climbing a tree"] * 12), True),
    ("wow! " * 80, True),
    ("x" * 2000, False),  # one endless word: cut inside it
])
def test_a_long_prompt_loses_the_end_of_its_caption_never_the_suffix(prompt_encoder, caplog, caption, words):
    enc = prompt_encoder
    settings = UpscaleSettings(prompt=caption)
    room = enc.tokenizer.model_max_length - 2  # start and end tokens
    full = _ids(enc, settings.full_prompt)
    assert len(full) > room  # the case: the tokenizer alone would cut the suffix
    fitted, dropped = enc.fit(settings.prompt, settings.prompt_suffix, settings.join_prompt)
    ids = _ids(enc, fitted)
    suffix = _ids(enc, ", " + settings.prompt_suffix)
    assert len(ids) <= room and ids[-len(suffix):] == suffix  # the whole suffix, with the joining rule's comma
    kept = ids[:-len(suffix)]
    # The caption's first tokens, in order; whole words (a word cut short would be re-read as a
    # word of its own, so its last piece may differ then).
    n = len(kept) if words else len(kept) - 1
    assert kept and kept[:n] == _ids(enc, caption)[:n]
    if words:
        assert enc.tokenizer.convert_ids_to_tokens(kept[-1]).endswith("</w>")
        assert len(ids) > room - 12  # no more than needed: at most one word's pieces
    else:
        assert len(ids) == room
    assert dropped == len(full) - len(ids)
    # What the text model sees: exactly these tokens, between the start and end tokens.
    model_ids = enc.tokenizer([fitted], padding="max_length", max_length=room + 2, truncation=True).input_ids[0]
    assert model_ids[1:len(ids) + 1] == ids and model_ids[len(ids) + 1] == enc.tokenizer.eos_token_id
    # One short warning with the count, not the prompt; said once however many chunks encode it.
    caplog.clear()
    with caplog.at_level("WARNING", logger="vs_uav.core.models.text_encoder"):
        for _ in range(3):
            enc.encode(settings.prompt, settings.negative_prompt, suffix=settings.prompt_suffix, join=settings.join_prompt)
    assert [r.getMessage() for r in caplog.records] == [
        f"prompt: {dropped} CLIP tokens beyond the text model's 77 dropped from the end of the caption; the "
        "quality suffix is kept"]


def test_a_prompt_that_fits_is_encoded_as_the_official_pipeline_joins_it(prompt_encoder, caplog):
    enc = prompt_encoder
    settings = UpscaleSettings(prompt="an old cartoon")
    assert enc.fit(settings.prompt, settings.prompt_suffix, settings.join_prompt) == (settings.full_prompt, 0)
    with caplog.at_level("WARNING"):
        with_suffix = enc.encode(settings.prompt, settings.negative_prompt, suffix=settings.prompt_suffix, join=settings.join_prompt)
    assert not caplog.records
    assert (with_suffix == enc.encode(settings.full_prompt, settings.negative_prompt)).all()
    assert UpscaleSettings.join_prompt("a koala,", "best") == "a koala,best"
    assert UpscaleSettings.join_prompt("", "best") == "best" and UpscaleSettings.join_prompt("a", "") == "a"


def test_text_is_parsed_by_the_settings_type():
    """Setting.parse: what a command-line option or form field holds, before range checks."""
    S = SETTINGS_BY_NAME
    assert (S["steps"].parse("20"), S["guidance_scale"].parse("7.5"), S["propagation_steps"].parse("24, 26,28,"),
            S["propagation_steps"].parse(""), S["scene_change"].parse("no"), S["prompt"].parse("a koala")) == \
        (20, 7.5, [24, 26, 28], [], False, "a koala")
    for name, text, accepted in [("steps", "2.5", "an integer in [1, 1000]"), ("seed", "1e3", "an integer in"),
                                 ("scene_change", "maybe", "True or False"),
                                 ("propagation_steps", "24;26", "integers separated by commas, e.g. 24,26,28")]:
        with pytest.raises(ValueError, match=f"^accepted: {re.escape(accepted)}"):
            S[name].parse(text)
