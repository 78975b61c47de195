"""Loading the official model folder through the public API (``UpscalePipeline.from_pretrained``
over :mod:`vs_uav.weights.folder`), refusing damaged copies, and the module's import hygiene."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import MANIFESTS, MODEL_DIR, REPO, copy_model

from vs_uav.engine.pipeline import UpscaleAVideoModel, UpscalePipeline
from vs_uav.weights.folder import LAYOUT, ModelLoadError, check_folder


def load_model(folder: Path, vae: str = "3d") -> UpscaleAVideoModel:
    return UpscalePipeline.from_pretrained(folder, vae=vae, flow="dis").model


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
    return copy_model(tmp_path / "upscale_a_video")


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
    with pytest.raises(ValueError, match="vae='4d'; accepted: '3d', 'video'"):
        load_model(MODEL_DIR, vae="4d")
    with pytest.raises(ValueError, match="vae='4d'; accepted: '3d', 'video'"):
        check_folder(MODEL_DIR, vae="4d")


def test_the_folder_is_checked_once_per_load(monkeypatch):
    from vs_uav.engine import pipeline

    calls = []
    monkeypatch.setattr(pipeline, "check_folder", lambda *a: calls.append(a) or check_folder(*a))
    load_model(MODEL_DIR)
    assert len(calls) == 1


def test_a_broken_tokenizer_is_named(model_copy):
    (model_copy / "tokenizer" / "vocab.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"tokenizer: cannot load the CLIP tokenizer"):
        load_model(model_copy)


def test_a_bad_text_encoder_config_is_named_in_one_line(model_copy):
    path = model_copy / LAYOUT["text_encoder"].config
    path.write_text(json.dumps({**json.loads(path.read_text()), "hidden_size": "big"}))
    with pytest.raises(ModelLoadError, match=r"text_encoder/config\.json: not a CLIP text config .*hidden_size") as e:
        load_model(model_copy)
    assert "\n" not in str(e.value)


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


COMPONENTS = ("unet", "vae_3d", "vae_video", "text_encoder")


def _built_and_loaded_the_old_way(folder: Path, name: str) -> torch.nn.Module:
    """A component as loading made it before: constructed normally (randomly initialised), then
    filled by copying the file's tensors in with load_state_dict."""
    from vs_uav.core.models.text_encoder import PromptEncoder, clip_text_config
    from vs_uav.core.models.unet_video import UNetVideoConfig, UNetVideoModel
    from vs_uav.core.models.vae_video import AutoencoderKLVideo, VAEVideoConfig
    from vs_uav.weights.folder import TOKENIZER_DIR, find_weights, read_config, read_state_dict

    sd = read_state_dict(find_weights(folder, name))
    if name == "unet":
        module = UNetVideoModel(read_config(folder, name, UNetVideoConfig.from_dict))
    elif name.startswith("vae_"):
        module = AutoencoderKLVideo(read_config(folder, name, VAEVideoConfig.from_dict))
    else:
        config = read_config(folder, name, clip_text_config)
        module = PromptEncoder.from_config(folder / TOKENIZER_DIR, config).text_model
        sd = {k.removeprefix("text_model."): v for k, v in sd.items() if not k.endswith("position_ids")}
    module.load_state_dict(sd, strict=True)
    return module


def _same_tensors(new: dict, old: dict) -> None:
    assert new.keys() == old.keys()
    for k in old:
        assert new[k].device.type == "cpu", k  # nothing left on the meta device
        assert new[k].dtype == old[k].dtype and torch.equal(new[k], old[k]), k


@pytest.mark.parametrize("name", COMPONENTS)
def test_a_component_built_without_weights_loads_to_the_same_tensors_and_buffers(name):
    """Built on the meta device and filled from the file: every parameter and every buffer
    (the non-persistent ones that __init__ computes, CLIP's position ids, included) is the
    normally built and loaded model's, on the CPU."""
    from vs_uav.weights.folder import load_component

    new = load_component(MODEL_DIR, name)
    new = getattr(new, "text_model", new)
    old = _built_and_loaded_the_old_way(MODEL_DIR, name)
    _same_tensors(new.state_dict(), old.state_dict())
    _same_tensors(dict(new.named_parameters()), dict(old.named_parameters()))
    _same_tensors(dict(new.named_buffers()), dict(old.named_buffers()))
    if name == "text_encoder":  # the buffer the state dict does not hold, really computed
        assert "embeddings.position_ids" in dict(new.named_buffers())
        assert "embeddings.position_ids" not in new.state_dict()
    if name == "unet":  # the rotary table stays one parameter under its 17 names
        rotary = {id(m.freqs) for m in new.modules() if type(m).__name__ == "RotaryEmbedding"}
        assert len(rotary) == 1 and len([k for k in new.state_dict() if k.endswith("rotary_emb.freqs")]) == 17


def test_building_draws_no_random_numbers_and_takes_no_memory():
    from vs_uav.weights.folder import build_component

    state = torch.random.get_rng_state()
    built = [build_component(MODEL_DIR, name).module for name in COMPONENTS]
    assert torch.equal(torch.random.get_rng_state(), state)  # no random initialisation ran
    assert all(p.is_meta for m in built for p in m.parameters())
    torch.nn.Linear(2, 2)  # the check can fail: a normal build draws
    assert not torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_from_pretrained_holds_the_old_numbers(dtype):
    """The whole pipeline, moved and cast as before: the same tensors as loading into randomly
    initialised models gave (bfloat16: the file's float32 cast once, as before)."""
    pipe = UpscalePipeline.from_pretrained(MODEL_DIR, vae="3d", dtype=dtype, flow="dis")
    want = getattr(torch, dtype)
    for module, name, cast in ((pipe.model.unet, "unet", want), (pipe.model.vae, "vae_3d", torch.float32),
                               (pipe.model.prompt_encoder.text_model, "text_encoder", want)):
        old = _built_and_loaded_the_old_way(MODEL_DIR, name).to(cast)
        _same_tensors(module.state_dict(), old.state_dict())
        _same_tensors(dict(module.named_buffers()), dict(old.named_buffers()))
        assert not any(p.requires_grad for p in module.parameters()) and not module.training


def test_empty_weights_is_this_threads_only():
    import threading

    from vs_uav.weights.folder import empty_weights

    original = torch.nn.Module.register_parameter
    other = {}
    with empty_weights():
        inside = torch.nn.Linear(3, 3)
        with empty_weights():  # nests
            nested = torch.nn.Linear(3, 3)
        after_nested = torch.nn.Linear(3, 3)
        worker = threading.Thread(target=lambda: other.setdefault("linear", torch.nn.Linear(3, 3)))
        worker.start()
        worker.join()
    assert inside.weight.is_meta and nested.weight.is_meta and after_nested.bias.is_meta
    assert not other["linear"].weight.is_meta  # another thread built as usual meanwhile
    assert not torch.nn.Linear(3, 3).weight.is_meta
    assert torch.nn.Module.register_parameter is original


def test_a_missing_key_is_refused_naming_it(model_copy):
    path = model_copy / "vae" / "vae_3d.bin"
    sd = torch.load(path, weights_only=True)
    sd.pop("decoder.conv_out.bias")
    torch.save(sd, path)
    with pytest.raises(ModelLoadError, match=r"vae_3d\.bin: does not match vae/vae_3d_config\.json: "
                                             r"1 missing key\(s\): decoder\.conv_out\.bias$"):
        load_model(model_copy)


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)


def test_model_folder_needs_neither_torch_nor_vapoursynth():
    """`uav doctor` and `uav download` read the layout where torch or VapourSynth are broken."""
    r = _fresh_python(
        "import sys\n"
        "import vs_uav.weights.folder, vs_uav.weights.verify, vs_uav.app.doctor\n"
        "heavy = sorted(m for m in ('torch', 'vapoursynth', 'transformers') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    assert r.returncode == 0, r.stderr


def test_every_module_imports_on_its_own():
    """Every vs_uav module imports by itself in a fresh interpreter (the import graph itself,
    layers and cycles, is tests/test_layers.py's)."""
    from test_layers import import_graph

    modules = sorted(m for m in import_graph() if not m.endswith(".__main__"))  # __main__ runs the program
    assert len(modules) > 40
    r = _fresh_python(
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    for m in [m for m in sys.modules if m.split('.')[0] in ('vs_uav', 'vs_uav_gui')]:\n"
        "        del sys.modules[m]\n"
        "    importlib.import_module(name)\n"
    )
    assert r.returncode == 0, r.stderr


def test_missing_reference_fixtures_fail_collection(tmp_path):
    """Tests over the reference cases cannot vanish: without the fixtures, collection fails
    naming the folder (here UAV_REFERENCE_DIR's)."""
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                        "tests/test_components.py"], capture_output=True, text=True, cwd=REPO, timeout=300,
                       env={**os.environ, "UAV_REFERENCE_DIR": str(tmp_path / "nowhere")})
    assert r.returncode != 0
    assert f"reference fixtures missing: {tmp_path / 'nowhere' / 'public' / 'cases'} is not a folder" in r.stdout
