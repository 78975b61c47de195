"""Scheduler, low-res noise, propagation, colour correction and prompt encoding
against the official implementation's outputs (../shared/reference)."""

from __future__ import annotations

import pytest
import torch
from conftest import ATOL, MODEL_DIR, case_names, load_case, max_abs_err

from vs_uav.core.color import adain, color_fix, wavelet
from vs_uav.core.propagation import propagate
from vs_uav.core.scheduling import DDIMScheduler, LowResScheduler, SchedulerConfig


@pytest.mark.parametrize("name", case_names("ddim"))
def test_ddim_step_v0_step_vt(name):
    meta, t = load_case(name)
    p = meta["params"]
    sched = DDIMScheduler(SchedulerConfig.from_json_file(MODEL_DIR / "scheduler" / "scheduler_config.json"))
    timesteps = sched.set_timesteps(p["num_inference_steps"])
    assert timesteps.tolist() == p["timesteps"]
    assert max_abs_err(sched.alphas_cumprod, t["alphas_cumprod"]) <= 1e-7
    for step in p["steps"]:
        i, ts = step["index"], step["timestep"]
        out, sample = t[f"model_output_{i}"], t[f"sample_{i}"]
        x0 = sched.step_v0(out, ts, sample)
        assert max_abs_err(x0, t[f"pred_original_sample_{i}"]) <= ATOL
        assert max_abs_err(sched.step_vt(t[f"x0_in_{i}"], out, ts, sample), t[f"prev_sample_{i}"]) <= ATOL
        assert max_abs_err(sched.step_vt(x0, out, ts, sample), t[f"prev_sample_from_own_x0_{i}"]) <= ATOL


@pytest.mark.parametrize("name", case_names("lowres_noise"))
def test_low_res_noise(name):
    meta, t = load_case(name)
    sched = LowResScheduler(SchedulerConfig.from_json_file(MODEL_DIR / "low_res_scheduler" / "scheduler_config.json"))
    for level in meta["params"]["noise_levels"]:
        noisy = sched.add_noise(t["image"], t["noise"], level)
        assert max_abs_err(noisy, t[f"noisy_{level}"]) <= ATOL


@pytest.mark.parametrize("name", case_names("propagation"))
def test_propagation(name):
    meta, t = load_case(name)
    p = meta["params"]
    assert p["mode"] == "fuse" and not p["learnable"]
    out = propagate(
        t["x"], t["flows_forward"], t["flows_backward"], interpolation=p["interpolation"],
        fuse_scale=p["fuse_scale"], alpha1=p["alpha1"], alpha2=p["alpha2"],
    )
    assert max_abs_err(out, t["out"]) <= ATOL


def test_propagation_keeps_features_where_flows_disagree():
    x = torch.randn(1, 4, 3, 8, 8)
    fw = torch.zeros(1, 2, 2, 8, 8)
    bw = torch.full((1, 2, 2, 8, 8), 5.0)  # wildly inconsistent: every pixel rejected
    assert torch.equal(propagate(x, fw, bw), x)
    # Consistent zero flows fuse each frame half-and-half with its propagated neighbour.
    out = propagate(x, fw, torch.zeros_like(bw))
    back2 = x[:, :, 2]
    back1 = 0.5 * back2 + 0.5 * x[:, :, 1]
    back0 = 0.5 * back1 + 0.5 * x[:, :, 0]
    torch.testing.assert_close(out[:, :, 0], back0)
    torch.testing.assert_close(out[:, :, 1], 0.5 * back0 + 0.5 * back1)


@pytest.mark.parametrize("name", case_names("color_fix"))
def test_color_fix(name):
    _, t = load_case(name)
    assert max_abs_err(adain(t["out"], t["ref"]), t["adain"]) <= ATOL
    assert max_abs_err(wavelet(t["out"], t["ref"]), t["wavelet"]) <= ATOL
    # The pipeline's entry point builds the reference itself from the low-res frames.
    assert max_abs_err(color_fix(t["out"], t["lr"], "wavelet"), t["wavelet"]) <= ATOL
    assert torch.equal(color_fix(t["out"], t["lr"], "none"), t["out"])
    with pytest.raises(ValueError, match="color_fix='sepia'.*accepted: none, adain, wavelet"):
        color_fix(t["out"], t["lr"], "sepia")


@pytest.mark.parametrize("name", case_names("text_encode"))
def test_prompt_encoding(name):
    from vs_uav.engine.pipeline import UpscalePipeline

    meta, t = load_case(name)
    p = meta["params"]
    enc = UpscalePipeline.from_pretrained(MODEL_DIR).model.prompt_encoder
    ids = enc.tokenizer([p["prompt"]], padding="max_length", max_length=77, truncation=True,
                        return_tensors="pt").input_ids
    assert ids[0].tolist() == p["input_ids_prompt"]
    embeds = enc.encode(p["prompt"], p["negative_prompt"], guidance=p["do_classifier_free_guidance"])
    assert max_abs_err(embeds, t["prompt_embeds"]) <= ATOL
    positive_only = enc.encode(p["prompt"], p["negative_prompt"], guidance=False)
    assert max_abs_err(positive_only[0], t["prompt_embeds"][1]) <= ATOL


def test_scheduler_config_rejects_unknown_key_and_value():
    with pytest.raises(ValueError, match="SchedulerConfig: unknown config key 'beta_shedule'; accepted: beta_end, "):
        SchedulerConfig.from_dict({"beta_shedule": "linear"})
    with pytest.raises(ValueError, match="prediction_type='x0'"):
        SchedulerConfig.from_dict({"prediction_type": "x0"})


def test_ddim_rejects_bad_step_count():
    sched = DDIMScheduler(SchedulerConfig.from_json_file(MODEL_DIR / "scheduler" / "scheduler_config.json"))
    with pytest.raises(ValueError, match=r"num_inference_steps=0 is out of range; accepted: 1\.\.1000"):
        sched.set_timesteps(0)
