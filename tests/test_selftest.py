"""`uav selftest`: the tiny random model it builds (strictly loadable, runs), its tokenizer,
clear failures, and the whole command end to end in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vs_uav.app import selftest
from vs_uav.engine.pipeline import UpscalePipeline

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return selftest.build_tiny_model(tmp_path_factory.mktemp("selftest") / "upscale_a_video", seed=0)


def test_the_tiny_model_is_a_complete_official_folder_that_loads_strictly_and_runs(tiny):
    names = {str(p.relative_to(tiny)) for p in tiny.rglob("*") if p.is_file()}
    assert names == {
        "model_index.json", "unet/unet_video_config.json", "unet/unet_video.bin", "vae/vae_3d_config.json",
        "vae/vae_3d.bin", "vae/vae_video_config.json", "vae/vae_video.bin", "scheduler/scheduler_config.json",
        "low_res_scheduler/scheduler_config.json", "text_encoder/config.json", "text_encoder/pytorch_model.bin",
        "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json",
        "tokenizer/special_tokens_map.json",
    }
    # The official checkpoint's text encoder keys carry "text_model.", whatever transformers is installed.
    sd = torch.load(tiny / "text_encoder" / "pytorch_model.bin", weights_only=True)
    assert sd and all(k.startswith("text_model.") for k in sd)
    for vae in ("3d", "video"):  # strict: every key and shape checked against the configs
        assert UpscalePipeline.from_pretrained(tiny, vae=vae).model.vae_kind == vae
    pipe = UpscalePipeline.from_pretrained(tiny, flow="dis")
    out = pipe(torch.rand(1, 3, 2, 16, 16) * 2 - 1, prompt="selftest", steps=2, seed=1)
    assert out.frames.shape == (1, 3, 2, 64, 64)
    assert torch.isfinite(out.frames).all() and out.frames.std() > 0.01


def test_the_builder_is_deterministic_per_seed(tiny, tmp_path):
    again = selftest.build_tiny_model(tmp_path / "again", seed=0, verify=False)
    for rel in ("unet/unet_video.bin", "vae/vae_video.bin", "text_encoder/pytorch_model.bin"):
        a = torch.load(tiny / rel, weights_only=True)
        b = torch.load(again / rel, weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), rel
    # No tensor is left all zero: every path of the random model contributes.
    unet = torch.load(tiny / "unet" / "unet_video.bin", weights_only=True)
    assert all(v.any() for v in unet.values() if v.is_floating_point())


def test_the_generated_clip_tokenizer_loads_and_encodes(tiny):
    from transformers import CLIPTokenizer

    vocab = json.loads((tiny / "tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    symbols = list(vocab)[:256]  # one symbol per byte, then the same word-final
    assert all(len(s) == 1 for s in symbols) and len(set(symbols)) == 256
    assert list(vocab)[256:512] == [s + "</w>" for s in symbols]
    assert len(vocab) == 514 and vocab["<|startoftext|>"] == 512 and vocab["<|endoftext|>"] == 513
    assert json.loads((tiny / "text_encoder" / "config.json").read_text())["vocab_size"] == len(vocab)

    tok = CLIPTokenizer.from_pretrained(str(tiny / "tokenizer"))
    assert tok.model_max_length == 77
    ids = tok("A cat, ok").input_ids
    # Lower-cased, spelled byte by byte (no merges), each word's last symbol word-final.
    assert ids == [512, vocab["a</w>"], vocab["c"], vocab["a"], vocab["t</w>"], vocab[",</w>"], vocab["o"],
                   vocab["k</w>"], 513]
    padded = tok(["wörld ✓"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert padded.shape == (1, 77) and padded.max() < len(vocab)
    assert tok.decode(tok("héllo world").input_ids, skip_special_tokens=True).strip() == "héllo world"


def test_a_missing_ffmpeg_fails_in_one_line_naming_it(tmp_path, capsys):
    messages: list[str] = []
    result = selftest.run_selftest(tmp_path, log=messages.append, ffmpeg="/nonexistent/ffmpeg")
    assert not result.ok and result.failed_step == "tools"
    assert result.error == "tools: ffmpeg not found at /nonexistent/ffmpeg; install it or run `uav doctor`"
    assert "\n" not in result.error
    assert any(m.startswith("tools: FAILED") for m in messages)
    assert not (tmp_path / "model").exists()  # it stopped before the expensive steps
    assert capsys.readouterr().out == ""  # library code never writes to stdout


def test_a_failing_render_names_the_step_and_shows_the_filters_error(tmp_path, capsys):
    # The real vspipe and filter, asked for a device no machine has: the render step fails.
    result = selftest.run_selftest(tmp_path / "work", device="cuda:99")
    assert not result.ok and result.failed_step == "render"
    assert [s.name for s in result.steps] == ["tools", "model", "render"]
    assert result.error.startswith("render: vspipe exited with status 1: ")
    assert "uav.Upscale: device='cuda:99'" in result.error and result.error.endswith("run `uav doctor`")
    assert "\n" not in result.error
    assert capsys.readouterr().out == ""


@pytest.mark.slow
def test_uav_selftest_end_to_end_passes_and_says_the_pictures_are_meaningless():
    env = {k: v for k, v in os.environ.items() if k != "UAV_BRIDGE_IMPL"}  # the real filter
    run = subprocess.run([sys.executable, "-m", "vs_uav", "selftest"], capture_output=True, text=True, cwd=REPO,
                         env=env, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == ("uav selftest: the model's weights are random, so the pictures are meaningless: "
                        "this tests the installation, not quality.")
    assert lines[-1].startswith("uav selftest: OK (") and "8 frames 32x24 -> 128x96" in lines[-1]
    for step in ("tools", "model", "render", "check"):
        assert f"uav selftest: {step}: ok (" in run.stderr


def test_the_shipped_configs_are_the_reference_tiny_models():
    """vs_uav/data/selftest holds the tiny model's configs as package data; the model's own
    configs are the reference tiny model's (values of every shared key), not a drifting copy."""
    from conftest import MODEL_DIR

    shipped = selftest._data_files()
    assert {"unet/unet_video_config.json", "vae/vae_3d_config.json", "vae/vae_video_config.json",
            "scheduler/scheduler_config.json", "low_res_scheduler/scheduler_config.json", "model_index.json",
            "text_encoder/config.json", "tokenizer/merges.txt"} <= set(shipped)
    for rel in ("unet/unet_video_config.json", "vae/vae_3d_config.json", "vae/vae_video_config.json",
                "scheduler/scheduler_config.json", "low_res_scheduler/scheduler_config.json"):
        ours = json.loads(shipped[rel].read_text(encoding="utf-8"))
        ref = json.loads((MODEL_DIR / rel).read_text(encoding="utf-8"))
        assert {k: ref.get(k) for k in ours} == ours, rel  # the reference may add defaults and metadata
