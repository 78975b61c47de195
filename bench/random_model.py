"""A model folder in the official layout with random weights, for benchmarks without the real ones.

The configs come from ``bench/full_size/`` (copies of the official U-Net and 3d VAE configs, the
SD x4 upscaler's text encoder config, the schedulers, and a small valid CLIP tokenizer), so the
U-Net and the VAE have the official architecture and size: their timing and memory are the real
model's. The built U-Net and VAE are checked key by key against the official manifests.
The text encoder keeps its width (the U-Net's cross-attention reads it) but gets
``--text-layers`` layers (default 1): it runs once per chunk and does not matter for speed.

    python bench/random_model.py OUT [--tiny] [--device cuda]

``--tiny`` shrinks the configs to the reference tiny model's sizes (a quick CPU smoke check).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
FULL_SIZE = HERE / "full_size"
sys.path.insert(0, str(HERE.parent))  # the repository's vs_uav, installed or not

# The reference tiny model's sizes (see /work/shared/reference/README.md).
TINY = {
    "unet": {"block_out_channels": [32, 32, 64, 64], "attention_head_dim": 1, "cross_attention_dim": 32},
    "vae_3d": {"block_out_channels": [32, 32, 64]},
    "text_encoder": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "projection_dim": 32},
}


def _edit_json(path: Path, changes: dict) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data, indent=2))


def _save(module: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    # Tied or shared tensors (the rotary freqs) are saved once per key, as the official file has them.
    save_file({k: v.detach().float().cpu().contiguous().clone() for k, v in module.state_dict().items()}, str(path))


def _check_manifest(module: torch.nn.Module, name: str) -> None:
    manifest = json.loads((FULL_SIZE / "manifests" / f"{name}.json").read_text())["keys"]
    found = {k: list(v.shape) for k, v in module.state_dict().items()}
    expected = {k: list(v) for k, v in manifest.items()}
    if found != expected:
        diff = sorted(k for k in found.keys() | expected.keys() if found.get(k) != expected.get(k))[:3]
        raise SystemExit(f"random_model: the {name} built from bench/full_size does not match the official "
                         f"manifest (keys differing, e.g. {diff})")


def build(out: Path, tiny: bool = False, device: str = "cpu", text_layers: int = 1, seed: int = 0) -> Path:
    """Write a complete model folder at ``out`` (replaced if present) and return it."""
    from vs_uav.core.models.text_encoder import clip_text_config
    from vs_uav.core.models.unet_video import UNetVideoConfig, UNetVideoModel
    from vs_uav.core.models.vae_video import AutoencoderKLVideo, VAEVideoConfig
    from vs_uav.weights.folder import LAYOUT, read_config

    started = time.monotonic()
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(FULL_SIZE, out, ignore=shutil.ignore_patterns("manifests"))
    _edit_json(out / LAYOUT["text_encoder"].config, {"num_hidden_layers": text_layers,
                                                     **(TINY["text_encoder"] if tiny else {})})
    if tiny:
        for name in ("unet", "vae_3d"):
            _edit_json(out / LAYOUT[name].config, TINY[name])

    torch.manual_seed(seed)
    with torch.device(device):  # initialising 700M parameters is much quicker on a GPU
        unet = UNetVideoModel(read_config(out, "unet", UNetVideoConfig.from_dict))
        vae = AutoencoderKLVideo(read_config(out, "vae_3d", VAEVideoConfig.from_dict))
    if not tiny:
        _check_manifest(unet, "unet_video")
        _check_manifest(vae, "vae_3d")
    _save(unet, out / "unet" / "unet_video.safetensors")
    _save(vae, out / "vae" / "vae_3d.safetensors")
    del unet, vae

    from transformers import CLIPTextModel

    text = CLIPTextModel(read_config(out, "text_encoder", clip_text_config))
    _save(text, out / "text_encoder" / "model.safetensors")
    print(f"random_model: {out} ({'tiny' if tiny else 'full size'}) in {time.monotonic() - started:.0f} s",
          file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--tiny", action="store_true", help="the reference tiny model's sizes (CPU smoke check)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--text-layers", type=int, default=1)
    args = ap.parse_args()
    build(args.out, args.tiny, args.device, args.text_layers)


if __name__ == "__main__":
    main()
