"""Benchmarks of the pipeline (not tests: timings on shared machines are noisy, so compare
ratios taken within one run). Writes a Markdown report to stdout.

    .venv/bin/python bench/bench_pipeline.py [--quick] > bench/last-run.md

Figures:
- seconds per frame per denoising step of the full-size U-Net (random weights have the
  real cost) at 64x64 and 128x128 low-res, CFG batch of 2, 8-frame window; float32 on
  CPU, fp16 and bf16 on CUDA when present;
- peak resident memory streaming 32 vs 256 frames of 64x64 with chunk_size=16 (tiny model);
- time per frame with chunk_size=16 vs one chunk holding all 64 frames (tiny model).
Memory runs happen in fresh subprocesses so each peak is its own.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
REFERENCE = REPO.parent / "shared" / "reference"
TINY = REFERENCE / "public" / "model"
FULL_UNET_CONFIG = REFERENCE / "configs" / "unet_video_config.json"


def synthetic_frames(a: int, b: int, h: int, w: int):
    """Frames a..b-1 of a smooth moving scene, made on demand (no clip held in memory)."""
    import torch

    y, x = torch.meshgrid(torch.linspace(0, 6, h), torch.linspace(0, 6, w), indexing="ij")
    frames = [torch.stack([torch.sin(x + 0.1 * t), torch.cos(y - 0.07 * t), torch.sin(x + y + 0.05 * t)])
              for t in range(a, b)]
    return (0.8 * torch.stack(frames, 1))[None]


def unet_speed(size: int, device: str, dtype_name: str, repeats: int) -> float:
    import torch

    from vs_uav.core.models.unet_video import UNetVideoConfig, UNetVideoModel

    dtype = getattr(torch, dtype_name)
    cfg = UNetVideoConfig.from_json_file(FULL_UNET_CONFIG)
    unet = UNetVideoModel(cfg).to(device, dtype).eval()
    x = torch.randn(2, 4, 8, size, size, device=device, dtype=dtype)
    lr = torch.randn(2, 3, 8, size, size, device=device, dtype=dtype)
    emb = torch.randn(2, 77, cfg.cross_attention_dim, device=device, dtype=dtype)
    labels = torch.tensor([120, 120], device=device)
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            unet(x, 500, lr, emb, labels)
            if device == "cuda":
                torch.cuda.synchronize()
            if i:  # the first call warms caches and kernels
                times.append(time.perf_counter() - t0)
    return min(times) / 8  # one call denoises 8 frames for one step


def stream_run(frames: int, chunk_size: int | None, size: int, steps: int, lookahead: int = 8) -> dict:
    """Stream a synthetic clip through the tiny model; returns seconds and peak RSS."""
    import torch

    from vs_uav.engine.pipeline import UpscalePipeline
    from vs_uav.settings import UpscaleSettings

    torch.manual_seed(0)
    pipe = UpscalePipeline.from_pretrained(TINY, flow="dis")
    # chunk_size None: the whole clip in one chunk (the official algorithm).
    settings = UpscaleSettings(prompt="a test scene", steps=steps, guidance_scale=6.0, noise_level=120,
                               propagation_steps=[steps - 1], chunk_size=chunk_size or max(8, frames),
                               lookahead=lookahead)
    t0 = time.perf_counter()
    checksum = 0.0
    for _, out in pipe.stream(lambda a, b: synthetic_frames(a, b, size, size), frames, settings):
        checksum += float(out.frames.double().sum())  # consume and drop each chunk
    seconds = time.perf_counter() - t0
    peak_kib = peak_rss_kib()
    return {"seconds": seconds, "per_frame": seconds / frames, "peak_mib": peak_kib / 1024, "checksum": checksum}


def peak_rss_kib() -> int:
    """This process's peak resident memory. VmHWM belongs to the address space, so unlike
    getrusage's ru_maxrss it does not inherit the parent's peak across fork and exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def in_subprocess(module: str, function: str, **kw) -> dict:
    """``bench/<module>.<function>(**kw)`` in a fresh interpreter: its peak memory is its own."""
    code = f"import json, sys; sys.path.insert(0, {str(REPO / 'bench')!r}); import {module} as b; " \
           f"print(json.dumps(b.{function}(**{kw!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def subprocess_run(**kw) -> dict:
    return in_subprocess("bench_pipeline", "stream_run", **kw)


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="skip the 128x128 CPU U-Net timing")
    ap.add_argument("--no-unet", action="store_true", help="skip the full-size U-Net timings")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    print(f"# Benchmark run\n\n- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"- machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"{platform.processor() or 'cpu'}; CUDA: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    print(f"- torch {torch.__version__}, command: `{' '.join([Path(sys.executable).name] + sys.argv)}`\n")

    print("## Full-size U-Net, seconds per frame per denoising step (CFG batch 2, 8-frame window)\n")
    print("| device | dtype | 64x64 | 128x128 |\n|---|---|---|---|")
    configs = [("cpu", "float32")]
    if torch.cuda.is_available():
        configs += [("cuda", "float16"), ("cuda", "bfloat16"), ("cuda", "float32")]
    for device, dtype in ([] if args.no_unet else configs):
        small = unet_speed(64, device, dtype, repeats=1 if device == "cpu" else 5)
        big = "skipped" if (args.quick and device == "cpu") else \
            f"{unet_speed(128, device, dtype, repeats=1 if device == 'cpu' else 5):.3f}"
        print(f"| {device} | {dtype} | {small:.3f} | {big} |")

    print(f"\n## Streaming (tiny model, 64x64, {args.steps} steps, propagation at the last step, DIS flow)\n")
    short = subprocess_run(frames=32, chunk_size=16, size=64, steps=args.steps)
    long = subprocess_run(frames=256, chunk_size=16, size=64, steps=args.steps)
    print("| frames | chunk_size | peak RSS (MiB) | s/frame |\n|---|---|---|---|")
    for n, r in ((32, short), (256, long)):
        print(f"| {n} | 16 | {r['peak_mib']:.0f} | {r['per_frame']:.3f} |")
    print(f"\npeak memory ratio 256/32 frames: **{long['peak_mib'] / short['peak_mib']:.3f}** (goal <= 1.15)\n")

    # The chunking machinery's own cost (no look-ahead), then the price of the default look-ahead
    # (8 frames past each chunk of 16: about 1.5x the U-Net work, by design).
    # Alternating rounds, best of each kept: this machine's speed drifts between runs.
    runs: dict[str, list[dict]] = {"bare": [], "chunked": [], "whole": []}
    for _ in range(args.rounds):
        runs["bare"].append(subprocess_run(frames=64, chunk_size=16, size=64, steps=args.steps, lookahead=0))
        runs["chunked"].append(subprocess_run(frames=64, chunk_size=16, size=64, steps=args.steps))
        runs["whole"].append(subprocess_run(frames=64, chunk_size=None, size=64, steps=args.steps))
    bare, chunked, whole = (min(runs[k], key=lambda r: r["per_frame"]) for k in ("bare", "chunked", "whole"))
    print("| frames | chunk_size | lookahead | s/frame | peak RSS (MiB) |\n|---|---|---|---|---|")
    print(f"| 64 | 16 | 0 | {bare['per_frame']:.3f} | {bare['peak_mib']:.0f} |")
    print(f"| 64 | 16 | 8 | {chunked['per_frame']:.3f} | {chunked['peak_mib']:.0f} |")
    print(f"| 64 | one chunk | - | {whole['per_frame']:.3f} | {whole['peak_mib']:.0f} |")
    print(f"\ntime per frame ratio chunk_size=16, no look-ahead / one chunk: "
          f"**{bare['per_frame'] / whole['per_frame']:.3f}** (goal <= 1.15)")
    print(f"\ntime per frame ratio chunk_size=16, lookahead 8 / one chunk: "
          f"**{chunked['per_frame'] / whole['per_frame']:.3f}** (expected about 1.5: 8 look-ahead frames "
          "per 16)")


if __name__ == "__main__":
    main()
