"""The one settings model: validation, defaults and the plugin signature derived from it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vs_uav.settings import SETTINGS, SETTINGS_BY_NAME, UpscaleSettings, vs_signature


def test_defaults_follow_the_official_inference():
    s = UpscaleSettings()
    assert (s.steps, s.guidance_scale, s.noise_level, s.propagation_steps) == (30, 6.0, 120, [])
    assert s.negative_prompt == "blur, worst quality"
    assert UpscaleSettings(prompt="a koala in a tree").full_prompt == "a koala in a tree, best quality, extremely detailed"
    assert UpscaleSettings(prompt="a koala, ").full_prompt == "a koala, best quality, extremely detailed"


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=0), r"steps=0; accepted: an integer in \[1, 1000\]"),
    (dict(noise_level=400), r"noise_level=400; accepted: an integer in \[0, 350\]"),
    (dict(vae="4d"), r"vae='4d'; accepted: '3d', 'video'"),
    (dict(guidance_scale=float("inf")), r"guidance_scale=inf; accepted: a number in \[0, 50\]"),
    (dict(propagation_steps=[30]), r"propagation_steps=\[30\]; accepted: step indices in \[0, 29\]"),
    (dict(propagation_steps=[1, 1]), r"propagation_steps=\[1, 1\]; accepted: a list of integers"),
    (dict(steps="30"), r"steps='30'; accepted: an integer"),
    (dict(tile_size=100), r"tile_size=100; accepted: 0 \(automatic\) or a multiple of 8 >= 32"),
    (dict(tile_size=64, tile_overlap=40), r"tile_overlap=40; accepted: 0..32"),
    (dict(device="gpu"), r"device='gpu'; accepted: 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    (dict(chunk_size=4), r"chunk_size=4; accepted: an integer in \[8, 4096\]"),
])
def test_bad_values_are_refused_with_the_accepted_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UpscaleSettings(**kwargs)


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
    assert "propagation_steps:int[]:opt:empty;" in sig and "guidance_scale:float:opt;" in sig and "prompt:data:opt;" in sig
    assert sig.count(";") == len(SETTINGS) + 1
    assert all(s.help and s.group for s in SETTINGS)
    assert SETTINGS_BY_NAME["noise_level"].max == 350


def test_settings_do_not_import_torch():
    code = "import sys, vs_uav.settings; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_choices_are_the_implementations_choices():
    """The settings model lists exactly what the code behind each choice implements."""
    from vs_uav.color import COLOR_FIX_CHOICES
    from vs_uav.flow import METHODS
    from vs_uav.model_folder import VAE_CHOICES
    from vs_uav.settings import SETTINGS_BY_NAME

    assert SETTINGS_BY_NAME["vae"].choices == VAE_CHOICES
    assert SETTINGS_BY_NAME["flow"].choices == ("auto", *METHODS)
    assert SETTINGS_BY_NAME["color_fix"].choices == COLOR_FIX_CHOICES
