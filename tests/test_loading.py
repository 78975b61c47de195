"""Loading the official model folder through the public API, and refusing damaged copies."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import MANIFESTS, MODEL_DIR
from vs_uav.loading import LAYOUT, ModelLoadError, load_model


@pytest.fixture(scope="module")
def loaded():
    return load_model(MODEL_DIR, vae="video")


def test_load_model_reads_every_component(loaded):
    assert loaded.vae_kind == "video"
    assert loaded.max_noise_level == json.loads((MODEL_DIR / "model_index.json").read_text())["max_noise_level"]
    assert loaded.unet.config.in_channels == 7
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    assert loaded.low_res_scheduler.config.num_train_timesteps == 1000
    # Every U-Net weight equals the file's.
    sd = torch.load(MODEL_DIR / "unet" / "unet_video.bin", weights_only=True)
    own = loaded.unet.state_dict()
    assert own.keys() == sd.keys()
    assert all(torch.equal(own[k], sd[k]) for k in sd)


@pytest.fixture
def model_copy(tmp_path):
    dst = tmp_path / "upscale_a_video"
    shutil.copytree(MODEL_DIR, dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def test_truncated_weights_are_refused_naming_the_file(model_copy):
    path = model_copy / "unet" / "unet_video.bin"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"unet_video\.bin: truncated or corrupted weight file .*uav download"):
        load_model(model_copy)


def test_garbage_weights_are_refused(model_copy):
    (model_copy / "vae" / "vae_3d.bin").write_bytes(b"\x00not a checkpoint" * 100)
    with pytest.raises(ModelLoadError, match=r"vae_3d\.bin: truncated or corrupted"):
        load_model(model_copy)


def test_missing_file_is_named(model_copy):
    (model_copy / "text_encoder" / "pytorch_model.bin").unlink()
    with pytest.raises(ModelLoadError, match=r"text_encoder/pytorch_model\.bin: file is missing; run `uav download`"):
        load_model(model_copy)
    with pytest.raises(ModelLoadError, match="model folder not found"):
        load_model(model_copy / "nope")


def test_config_weights_mismatch_is_explained(model_copy):
    cfg_path = model_copy / LAYOUT["vae_3d"].config
    cfg = json.loads(cfg_path.read_text())
    cfg["latent_channels"] = 8
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=r"vae_3d\.bin: does not match vae/vae_3d_config\.json: .*shape mismatch"):
        load_model(model_copy)


def test_wrong_shape_tensor_and_extra_key(model_copy):
    path = model_copy / "unet" / "unet_video.bin"
    sd = torch.load(path, weights_only=True)
    sd["conv_in.weight"] = torch.zeros(1)
    sd["bogus.weight"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(ModelLoadError, match=r"1 unexpected key\(s\): bogus\.weight; 1 shape mismatch\(es\), e\.g\. conv_in\.weight"):
        load_model(model_copy)


def test_unknown_config_key_is_refused(model_copy):
    cfg_path = model_copy / LAYOUT["unet"].config
    cfg = json.loads(cfg_path.read_text())
    cfg["layers_per_blok"] = 2
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=r"unet_video_config\.json: .*layers_per_blok"):
        load_model(model_copy)


def test_safetensors_preferred_and_identical(model_copy, loaded):
    from safetensors.torch import save_file

    sd = torch.load(model_copy / "unet" / "unet_video.bin", weights_only=True)
    # safetensors refuses shared storage: the rotary table is one tensor under 17 names.
    save_file({k: v.clone().contiguous() for k, v in sd.items()}, str(model_copy / "unet" / "unet_video.safetensors"))
    (model_copy / "unet" / "unet_video.bin").unlink()
    again = load_model(model_copy, vae="video")
    a, b = again.unet.state_dict(), loaded.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_bad_vae_choice():
    with pytest.raises(ValueError, match="vae='4d' is not supported; accepted: 3d, video"):
        load_model(MODEL_DIR, vae="4d")


def test_full_size_text_encoder_matches_manifest():
    from transformers import CLIPTextConfig, CLIPTextModel

    manifest = json.loads((MANIFESTS / "text_encoder.json").read_text())
    config = CLIPTextConfig.from_json_file(str(MANIFESTS / "text_encoder_config.json"))
    with torch.device("meta"):
        model = CLIPTextModel(config)
    ours = {("text_model." + k if not k.startswith("text_model.") else k): tuple(v.shape)
            for k, v in model.state_dict().items()}
    theirs = {k: tuple(v) for k, v in manifest["keys"].items()}
    # position_ids is a buffer old transformers saved and new ones recompute.
    theirs.pop("text_model.embeddings.position_ids")
    assert ours == theirs
    assert sum(p.numel() for p in model.parameters()) == manifest["parameters"]
