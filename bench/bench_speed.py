"""CPU speed of the full-size U-Net: precision and regional compilation, plus fp8 weight storage.
Not a test: timings on shared machines are noisy, so configurations alternate round by round and
each keeps its best. Writes a Markdown section to stdout.

    .venv/bin/python bench/bench_speed.py [--quick] >> bench/last-run.md

Figures (official U-Net architecture, random weights: the real cost; one 8-frame window,
guidance batch 2, ``--size`` latent pixels = low-res pixels, ``--threads`` torch threads):
- seconds per frame per denoising step for float32 eager (the baseline), bfloat16 eager,
  bfloat16 + compile, float32 + compile (``vs_uav.core.acceleration.compile_blocks``), each with its
  first (compiling) call's time and its deviation from float32 eager;
- the fastest of them against float32 eager;
- fp8 weights (``enable_fp8_weights``): resident U-Net weight bytes against bfloat16, output
  deviation from the bfloat16 U-Net, and its speed.
``--quick``: the reference tiny model's sizes, 16x16, one round (a smoke check of the script).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
REFERENCE = REPO.parent / "shared" / "reference"
FULL_CONFIG = REFERENCE / "configs" / "unet_video_config.json"
TINY_CONFIG = REFERENCE / "public" / "model" / "unet" / "unet_video_config.json"
FRAMES, BATCH = 8, 2

import torch  # noqa: E402

from vs_uav.core import acceleration
from vs_uav.core.models.unet_video import UNetVideoConfig, UNetVideoModel


def build(config: Path, dtype: torch.dtype, seed: int = 0) -> UNetVideoModel:
    """The U-Net with seeded random weights (float32 init, then cast: every dtype has the same numbers)."""
    torch.manual_seed(seed)
    return UNetVideoModel(UNetVideoConfig.from_json_file(config)).to(dtype).eval().requires_grad_(False)


def make_inputs(cfg: UNetVideoConfig, size: int) -> tuple:
    g = torch.Generator().manual_seed(1)
    return (torch.randn(BATCH, cfg.in_channels - 3, FRAMES, size, size, generator=g), 500,
            torch.randn(BATCH, 3, FRAMES, size, size, generator=g),
            torch.randn(BATCH, 77, cfg.cross_attention_dim, generator=g), torch.tensor([20] * BATCH))


class Variant:
    """One configuration: a model and whether its blocks run compiled (toggled per call, so
    eager and compiled share one copy of the weights)."""

    def __init__(self, name: str, model: UNetVideoModel, compiled: bool):
        self.name, self.model, self.compiled = name, model, compiled
        self.best = float("inf")
        self.first: Optional[float] = None
        self.output: Optional[torch.Tensor] = None

    def set_mode(self) -> None:
        impls = getattr(self.model, "_bench_compiled", None)
        if self.compiled and impls is None:
            acceleration.compile_blocks(self.model)
            self.model._bench_compiled = {b: b._compiled_call_impl for b in self.model.modules()
                                          if getattr(b, "_compiled_call_impl", None) is not None}
        for block, impl in (getattr(self.model, "_bench_compiled", None) or {}).items():
            block._compiled_call_impl = impl if self.compiled else None

    @torch.no_grad()
    def call(self, inputs: tuple) -> float:
        self.set_mode()
        start = time.perf_counter()
        out = self.model(*inputs)
        seconds = time.perf_counter() - start
        if self.first is None:
            self.first, self.output = seconds, out.float()
        else:
            self.best = min(self.best, seconds)
        return seconds


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32, help="latent height and width (= low-res pixels)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after the warm-up one")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke check: tiny model sizes, 16x16, one round")
    args = parser.parse_args(argv)
    config, size, rounds = (TINY_CONFIG, 16, 1) if args.quick else (FULL_CONFIG, args.size, args.rounds)
    torch.set_num_threads(args.threads)
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731

    f32, bf16 = build(config, torch.float32), build(config, torch.bfloat16)
    inputs = make_inputs(f32.config, size)
    variants = [Variant("float32 eager", f32, False), Variant("bfloat16 eager", bf16, False),
                Variant("bfloat16 + compile", bf16, True), Variant("float32 + compile", f32, True)]
    fp8 = build(config, torch.bfloat16)
    acceleration.enable_fp8_weights(fp8)
    fp8_variant = Variant("bfloat16, fp8 weights", fp8, False)

    for r in range(rounds + 1):  # round 0 warms up (and compiles); the others alternate, best kept
        for v in [*variants, fp8_variant]:
            log(f"round {r}: {v.name}: {v.call(inputs):.2f} s")

    per = FRAMES  # one call is one step of one 8-frame window
    base = variants[0]
    fastest = min(variants, key=lambda v: v.best)
    name = "reference tiny model sizes (--quick)" if args.quick else "official U-Net config, random weights"
    print(f"## CPU speed of the U-Net ({name})\n")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()} "
          f"(capability {torch.backends.cpu.get_cpu_capability()}), {args.threads} threads; "
          f"{size}x{size} latents, {FRAMES} frames, guidance batch {BATCH}; best of {rounds} alternating "
          f"round(s) after a warm-up one. s/frame/step = one U-Net call / {FRAMES}.\n")
    print("| configuration | s/frame/step | vs float32 eager | first call s | rel. L2 deviation vs float32 eager |")
    print("|---|---|---|---|---|")
    for v in [*variants, fp8_variant]:
        print(f"| {v.name} | {v.best / per:.3f} | {base.best / v.best:.2f}x | {v.first:.1f} | "
              f"{rel_error(v.output, base.output):.2e} |")
    print(f"\nFastest: **{fastest.name}**, {base.best / fastest.best:.2f}x float32 eager (goal >= 1.3x). "
          "First call of a compiled row: compiling, or loading from the inductor cache "
          f"({acceleration.inductor_cache_dir()}).\n")

    ratio = acceleration.weight_bytes(fp8) / acceleration.weight_bytes(bf16)
    dev = fp8_variant.output - variants[1].output
    print(f"fp8 weights: resident U-Net weights {acceleration.weight_bytes(fp8) / 2**20:.1f} MiB against "
          f"{acceleration.weight_bytes(bf16) / 2**20:.1f} MiB in bfloat16: **{ratio:.3f}** (goal <= 0.55); "
          f"output against the bfloat16 U-Net: relative L2 {rel_error(fp8_variant.output, variants[1].output):.3f}, "
          f"max |difference| {dev.abs().max().item():.3f} (output std {variants[1].output.std().item():.3f}).")
    on_device, whole = acceleration.offload_device_bytes(bf16), acceleration.weight_bytes(bf16)
    print(f"\nOffload (`offload=True`, CUDA only; the CPU has nothing to save): U-Net weights on the device "
          f"at once {on_device / 2**20:.1f} MiB of {whole / 2**20:.1f} MiB in bfloat16 (**{on_device / whole:.3f}**, "
          f"the largest block plus what stays), {acceleration.offload_device_bytes(fp8) / 2**20:.1f} MiB with fp8 "
          "weights; activations are not offloaded.")
    log(json.dumps({v.name: v.best / per for v in [*variants, fp8_variant]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
