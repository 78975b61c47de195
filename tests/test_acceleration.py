"""fp8 weight storage, group offloading and regional compilation (vs_uav.core.acceleration), on the
tiny reference U-Net on the CPU, and their wiring through UpscalePipeline.configure."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
import torch
from conftest import MODEL_DIR

from vs_uav.core import acceleration
from vs_uav.core.models.unet_video import UNetVideoConfig, UNetVideoModel
from vs_uav.engine.pipeline import UpscalePipeline
from vs_uav.settings import UpscaleSettings

UNET = MODEL_DIR / "unet"


@pytest.fixture(autouse=True)
def one_thread():
    # The tiny U-Net's layers are too small to share: two threads only wait on each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_unet(dtype: torch.dtype = torch.bfloat16) -> UNetVideoModel:
    model = UNetVideoModel(UNetVideoConfig.from_json_file(UNET / "unet_video_config.json"))
    model.load_state_dict(torch.load(UNET / "unet_video.bin", map_location="cpu", weights_only=True))
    return model.to(dtype).eval().requires_grad_(False)


def inputs(size: int = 16, batch: int = 1) -> tuple:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(batch, 4, 8, size, size, generator=g), 500,
            torch.randn(batch, 3, 8, size, size, generator=g), torch.randn(batch, 77, 32, generator=g),
            torch.tensor([20] * batch))


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@torch.no_grad()
def test_fp8_weights_halve_memory_keep_keys_and_stay_close():
    x = inputs()
    bf16 = tiny_unet()
    expected = bf16(*x)
    keys, before = list(bf16.state_dict()), acceleration.weight_bytes(bf16)

    model = tiny_unet()
    converted = acceleration.enable_fp8_weights(model)
    assert acceleration.is_fp8(model) and converted > 300
    assert model.down_blocks[1].resnets[0].conv1.weight.dtype == acceleration.FP8
    assert model.down_blocks[1].resnets[0].norm1.weight.dtype == torch.bfloat16  # norms stay
    assert model.conv_in.weight.dtype == torch.bfloat16 and model.dtype == torch.bfloat16
    # Measured: 0.535 (4.47 MB against 8.34 MB): norms, biases, embeddings stay 2 bytes.
    ratio = acceleration.weight_bytes(model) / before
    assert ratio <= 0.55, ratio

    out = model(*x)
    # Measured: relative L2 error 0.080 (bfloat16 against float32: 0.014); fp8 has 3 mantissa
    # bits, so every weight is off by up to 1/16 and the errors add up over ~40 layers.
    err = rel_error(out, expected)
    assert 0 < err < 0.12, err
    assert acceleration.enable_fp8_weights(model) == 0  # converted layers are left alone

    state = model.state_dict()
    assert list(state) == keys  # the official keys, in order
    assert {v.dtype for v in state.values()} == {torch.bfloat16}  # read back as computed with
    again = tiny_unet()
    acceleration.enable_fp8_weights(again)
    again.load_state_dict(state)  # quantised on the way in: the same fp8 numbers
    assert torch.equal(again(*x), out)


@torch.no_grad()
def test_group_offload_hooks_and_same_output():
    x = inputs()
    model = tiny_unet(torch.float32)
    expected = model(*x)
    blocks = acceleration.enable_group_offload(model, torch.device("cpu"))
    # conv_in, time and class embeddings, 4+4+4+4 level blocks, mid block and its temporal
    # module, conv_norm_out, conv_out; not the rotary embedding (shared, never called).
    assert blocks == 23
    assert len(model.mid_block._forward_pre_hooks) == 1 and len(model.mid_block._forward_hooks) == 1
    assert not model.temporal_rotary_emb._forward_pre_hooks
    assert torch.equal(model(*x), expected)
    # The figure it saves: on a GPU only the largest block and the shared tensors are there at once.
    on_device, whole = acceleration.offload_device_bytes(model), acceleration.weight_bytes(model)
    largest = max(acceleration.weight_bytes(b) for b in (*model.down_blocks, *model.up_blocks, model.mid_block))
    assert largest <= on_device < 0.3 * whole  # measured: 0.19 (tiny), see bench_speed for full size
    acceleration.disable_group_offload(model, torch.device("cpu"))
    assert not model.mid_block._forward_pre_hooks and not model.mid_block._forward_hooks
    assert torch.equal(model(*x), expected)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@torch.no_grad()
def test_group_offload_on_cuda_keeps_weights_on_the_host():
    x = tuple(t.cuda() if isinstance(t, torch.Tensor) else t for t in inputs(32))
    model = tiny_unet(torch.float16).cuda()
    expected = model(*x)
    on_device, whole = acceleration.offload_device_bytes(model), acceleration.weight_bytes(model)
    before = torch.cuda.memory_allocated()
    acceleration.enable_group_offload(model, torch.device("cuda"))
    assert before - torch.cuda.memory_allocated() >= whole - on_device  # the blocks left the GPU
    conv = model.up_blocks[1].resnets[0].conv1
    assert conv.weight.device.type == "cpu" and conv.weight.is_pinned()
    assert torch.equal(model(*x), expected)
    assert conv.weight.device.type == "cpu"


def video(frames: int = 8, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(1, 3, frames, size, size, generator=g) * 2 - 1


def test_configure_applies_once_and_refuses_going_back(caplog):
    pipe = UpscalePipeline.from_pretrained(MODEL_DIR, dtype="bfloat16", flow="dis")
    settings = UpscaleSettings(weights="fp8", offload=True, steps=2, chunk_size=8, lookahead=0)
    with caplog.at_level(logging.INFO, logger="vs_uav.engine.pipeline"):
        pipe.configure(settings)
    assert "offload: no effect on the cpu device" in caplog.text
    unet = pipe.model.unet
    weight = unet.up_blocks[1].resnets[0].conv1.weight
    assert weight.dtype == acceleration.FP8
    stored = weight.data_ptr()
    pipe.configure(settings.replace(seed=3))  # same accelerations: nothing happens
    assert weight.data_ptr() == stored and weight.dtype == acceleration.FP8
    with pytest.raises(ValueError, match=r"^weights='default' .*load the model again"):
        pipe.configure(settings.replace(weights="default"))
    # The chunk driver configures: the pipeline runs with what its settings ask for.
    out = pipe(video(), settings.replace(offload=False))
    assert pipe._acceleration == ("fp8", False, False)
    assert out.frames.shape == (1, 3, 8, 64, 64) and torch.isfinite(out.frames).all()


def test_filter_engines_differ_by_acceleration():
    pytest.importorskip("vapoursynth")
    from vs_uav.engine.cache import get_engine

    plain, _ = get_engine(MODEL_DIR, "3d", "cpu", "bfloat16", "dis")
    fp8, _ = get_engine(MODEL_DIR, "3d", "cpu", "bfloat16", "dis", ("fp8", False, False))
    assert fp8 is not plain
    assert get_engine(MODEL_DIR, "3d", "cpu", "bfloat16", "dis", ("default", False, False))[0] is plain


def test_inductor_cache_dir_is_per_user_unless_set(monkeypatch, tmp_path):
    from platformdirs import user_cache_dir

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    expected = Path(user_cache_dir("vs-uav")) / "torchinductor"
    assert acceleration.inductor_cache_dir() == expected
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(expected)  # where inductor looks
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    assert acceleration.inductor_cache_dir() == tmp_path


@pytest.mark.slow
@torch.no_grad()
def test_compiled_blocks_match_eager():
    x = inputs()
    model = tiny_unet(torch.float32)
    expected = model(*x)
    # Every repeated block of the U-Net is wrapped (compiled lazily, on its first call).
    assert acceleration.compile_blocks(model) == 47
    assert model.mid_block.resnets[0]._compiled_call_impl is not None
    acceleration.uncompile_blocks(model)
    assert model.mid_block.resnets[0]._compiled_call_impl is None
    # Compiling all 47 costs minutes on 2 cold CPU cores (bench/bench_speed.py measures it):
    # the test compiles the second down block and the mid block (resnets and transformers,
    # temporal layers inside, at two sizes) and runs the whole U-Net through them.
    assert acceleration.compile_blocks(model.down_blocks[1]) + acceleration.compile_blocks(model.mid_block) == 7
    start = time.monotonic()
    out = model(*x)
    logging.getLogger(__name__).info("compiled first call: %.1f s", time.monotonic() - start)
    # Measured: max |difference| 4e-6 on outputs of size ~3 (operation order only).
    assert (out - expected).abs().max().item() < 1e-4
    acceleration.uncompile_blocks(model)
