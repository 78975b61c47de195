"""The video U-Net against the official implementation (../shared/reference)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ATOL, CONFIGS, MANIFESTS, MODEL_DIR, load_case, max_abs_err

from vs_uav.core.models.unet_video import UNetVideoConfig, UNetVideoModel

TINY_CONFIG = MODEL_DIR / "unet" / "unet_video_config.json"
TINY_WEIGHTS = MODEL_DIR / "unet" / "unet_video.bin"


@pytest.fixture(scope="module")
def tiny_unet() -> UNetVideoModel:
    model = UNetVideoModel(UNetVideoConfig.from_json_file(TINY_CONFIG)).eval()
    sd = torch.load(TINY_WEIGHTS, map_location="cpu", weights_only=True)
    result = model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return model


def test_full_size_matches_manifest():
    manifest = json.loads((MANIFESTS / "unet_video.json").read_text())
    with torch.device("meta"):
        model = UNetVideoModel(UNetVideoConfig.from_json_file(CONFIGS / "unet_video_config.json"))
    sd = model.state_dict()
    expected = manifest["keys"]
    assert set(sd) == set(expected)
    assert list(sd) == list(expected)  # same order too
    bad = {k: (list(v.shape), expected[k]) for k, v in sd.items() if list(v.shape) != expected[k]}
    assert not bad
    # The manifest counts each parameter once: the shared rotary ``freqs`` (17 names) counts once.
    assert sum(p.numel() for p in model.parameters()) == manifest["parameters"]
    freqs = [k for k in sd if k.endswith("rotary_emb.freqs")]
    assert len(freqs) == 17
    assert len({id(model.get_parameter(k)) for k in freqs}) == 1


def test_tiny_forward_matches_official(tiny_unet):
    meta, t = load_case("unet_forward")
    p = meta["params"]
    with torch.no_grad():
        out = tiny_unet(
            t["sample"],
            torch.tensor(p["timestep"], dtype=torch.long),
            t["low_res"],
            t["encoder_hidden_states"],
            torch.tensor(p["class_labels"], dtype=torch.long),
        )
    assert out.dtype == torch.float32
    err = max_abs_err(out, t["out"])
    assert err <= ATOL, f"max abs error {err:.3g}"


def test_tiny_forward_odd_size_and_int_timestep(tiny_unet):
    # Sizes not divisible by 8 take the forced-upsample-size path; python ints are accepted.
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 3, 10, 13, generator=g)
    low_res = torch.randn(1, 3, 3, 10, 13, generator=g)
    ctx = torch.randn(1, 7, 32, generator=g)
    with torch.no_grad():
        out = tiny_unet(sample, 500, low_res, ctx, 20)
    assert out.shape == sample.shape
    assert torch.isfinite(out).all()


def test_config_rejects_unknown_key():
    d = json.loads(TINY_CONFIG.read_text())
    d["not_a_key"] = 1
    with pytest.raises(ValueError, match="not_a_key"):
        UNetVideoConfig.from_dict(d)


@pytest.mark.parametrize(
    "patch, match",
    [
        ({"down_block_types": ["DownBlock3D", "SomethingBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D"]},
         "SomethingBlock3D"),
        ({"temporal_module_config": {"attention_block_types": ["Temporal", "Temporal"]}}, "attention_block_types"),
        ({"temporal_module_config": {"bogus": 1}}, "bogus"),
        ({"attention_head_dim": 2}, "rotary"),
        ({"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift"),
    ],
)
def test_config_rejects_unsupported_values(patch, match):
    d = json.loads(TINY_CONFIG.read_text())
    d.update(patch)
    with pytest.raises(ValueError, match=match):
        UNetVideoConfig.from_dict(d)


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"in_channels": 0}, "UNetVideoConfig.in_channels must be a positive integer, got 0"),
        ({"upcast_attention": 1}, "UNetVideoConfig.upcast_attention must be a boolean, got 1"),
        ({"block_out_channels": []}, "UNetVideoConfig.block_out_channels must not be empty"),
        ({"block_out_channels": [32, True, 64, 64]}, "UNetVideoConfig.block_out_channels[1] must be a positive "
                                                     "integer, got True"),
        ({"up_block_types": ["UpBlock3D"]}, "UNetVideoConfig: down_block_types, up_block_types and "
                                            "block_out_channels must have the same length, got 4, 1 and 4"),
        ({"mid_block_type": "Mid"}, "UNetVideoConfig: unsupported mid_block_type 'Mid'; "
                                    "supported: ('UNetMidBlock3DCrossAttn',)"),
        ({"act_fn": "relu"}, "UNetVideoConfig: unsupported act_fn 'relu'; supported: ('silu', 'swish')"),
        ({"dual_cross_attention": True}, "UNetVideoConfig: dual_cross_attention is not supported (nor by the "
                                         "official code)"),
        ({"class_embed_type": "identity"}, "UNetVideoConfig: unsupported class_embed_type 'identity'; "
                                           "supported: (None, 'timestep')"),
        ({"num_class_embeds": 0}, "UNetVideoConfig.num_class_embeds must be a positive integer, got 0"),
        ({"max_noise_level": "350"}, "UNetVideoConfig.max_noise_level must be a number, got '350'"),
        ({"downsample_padding": 2}, "UNetVideoConfig.downsample_padding must be 0 or 1, got 2"),
        ({"norm_eps": 0}, "UNetVideoConfig.norm_eps must be a positive number, got 0"),
        ({"only_cross_attention": [True, 1, True, False]}, "UNetVideoConfig.only_cross_attention[1] must be a "
                                                           "boolean, got 1"),
        ({"up_temporal_idx": [1, 4]}, "UNetVideoConfig.up_temporal_idx entries must be block indices in [0, 4), "
                                      "got 4"),
    ],
)
def test_config_names_the_field_the_value_and_what_is_accepted(patch, message):
    d = json.loads(TINY_CONFIG.read_text())
    assert len(d["block_out_channels"]) == 4
    d.update(patch)
    with pytest.raises(ValueError) as e:
        UNetVideoConfig.from_dict(d)
    assert str(e.value) == message


def test_official_config_accepted():
    cfg = UNetVideoConfig.from_json_file(CONFIGS / "unet_video_config.json")
    assert cfg.heads_per_block == (8, 8, 8, 8)
    assert cfg.down_temporal_idx == (0, 1, 2, 3) and cfg.mid_temporal
