"""The video VAEs (vae_3d and vae_video) against the official layout and outputs."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ATOL, CONFIGS, MANIFESTS, PUBLIC, case_names, load_case, max_abs_err

from vs_uav.core.models.vae_video import AutoencoderKLVideo, VAEVideoConfig, decode_latents_vsr

VARIANTS = ["vae_3d", "vae_video"]
DECODE_CASES = case_names("vae", "_decode")


@pytest.mark.parametrize("name", VARIANTS)
def test_full_size_layout_matches_manifest(name):
    manifest = json.loads((MANIFESTS / f"{name}.json").read_text())
    # Meta device: the full-size layout without allocating ~450 MB of weights.
    with torch.device("meta"):
        vae = AutoencoderKLVideo(VAEVideoConfig.from_json_file(CONFIGS / f"{name}_config.json"))
    shapes = {k: list(v.shape) for k, v in vae.state_dict().items()}
    assert list(shapes) == list(manifest["keys"])  # same keys, same order
    assert shapes == manifest["keys"]
    assert sum(p.numel() for p in vae.parameters()) == manifest["parameters"]


@pytest.mark.parametrize("name", DECODE_CASES)
def test_decode_latents_vsr(name):
    meta, t = load_case(name)
    params = meta["params"]
    config_path = PUBLIC / params["vae_config"]
    vae = AutoencoderKLVideo.from_json_file(config_path)
    assert vae.uses_lr_image == params["lr_image_used"]
    assert vae.scaling_factor == pytest.approx(params["scaling_factor"])
    state = torch.load(config_path.with_name(config_path.name.replace("_config.json", ".bin")), weights_only=True)
    vae.load_state_dict(state, strict=True)
    vae.eval()
    with torch.no_grad():
        image = decode_latents_vsr(vae, t["latents"], t["lr_image"], params["w_lr"])
        err = max_abs_err(image, t["image"])
        print(f"{name}: max abs err {err:.3e}")
        assert err <= ATOL
        if not vae.uses_lr_image:  # the frame-wise VAE must not depend on the low-res frames
            assert torch.equal(decode_latents_vsr(vae, t["latents"], None, 0.0), image)


def test_config_rejects_unknown_key():
    d = json.loads((CONFIGS / "vae_video_config.json").read_text())
    VAEVideoConfig.from_dict(d)  # every official key (and the "_" metadata) is accepted
    with pytest.raises(ValueError, match="not_a_vae_option"):
        VAEVideoConfig.from_dict({**d, "not_a_vae_option": 1})


@pytest.mark.parametrize(
    "change, match",
    [
        ({"up_block_types": ["UpDecoderBlock3D", "UpBlock3D", "UpDecoderBlock3D"]}, "UpBlock3D"),
        ({"down_block_types": ["DownEncoderBlock3D", "DownEncoderBlock2D", "DownEncoderBlock3D"]}, "DownEncoderBlock2D"),
        ({"block_out_channels": [128, 256]}, "same length"),
        ({"act_fn": "gelu"}, "gelu"),
    ],
)
def test_config_rejects_unsupported_values(change, match):
    d = json.loads((CONFIGS / "vae_3d_config.json").read_text())
    with pytest.raises(ValueError, match=match):
        VAEVideoConfig.from_dict({**d, **change})
