"""What step caching (``cache_interval``) saves: the full-size U-Net's 30-step loop on the CPU.

The official U-Net architecture (random weights, float32) denoises one 8-frame window with
classifier-free guidance (batch 2) through the DDIM loop of the pipeline, at
``cache_interval`` 1 (exact), 2 and 3. Rounds alternate between the intervals and the best
time of each is kept (a shared machine is noisy). Prints a Markdown section: time per
render, speed-up over interval 1, and the final latents' deviation from interval 1.

    .venv/bin/python bench/bench_step_cache.py [--size 16] [--steps 30] [--rounds 2]
    .venv/bin/python bench/bench_step_cache.py --quick     # smoke check: 3 steps, 8x8 latents

Random weights show the speed and that the loop stays finite; the deviation they give says
nothing about the visual cost with the real weights.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Optional

import torch

REPO = Path(__file__).resolve().parent.parent
REFERENCE = Path(os.environ.get("UAV_REFERENCE_DIR", REPO.parent / "shared" / "reference"))
CONFIG = REFERENCE / "configs" / "unet_video_config.json"
SCHEDULER = REFERENCE / "public" / "model" / "scheduler" / "scheduler_config.json"


@torch.no_grad()
def render(unet, scheduler, inputs: dict, steps: int, interval: int, guidance_scale: float = 6.0) -> torch.Tensor:
    """The pipeline's denoising loop on one window; returns the final latents."""
    from vs_uav.core.step_cache import StepCache

    cache = StepCache(interval) if interval > 1 else None
    latents = inputs["latents"].clone()
    for i, t in enumerate(scheduler.set_timesteps(steps).tolist()):
        kw = {}
        if cache is not None:
            cache.start_step(i)
            kw["deep_cache"] = cache.slot()  # one window, no tiles: one call site
        v = unet(latents.expand(2, -1, -1, -1, -1), t, inputs["low_res"], inputs["embeds"], inputs["labels"], **kw)
        uncond, text = v.float().chunk(2)
        v = uncond + guidance_scale * (text - uncond)
        latents = scheduler.step_vt(scheduler.step_v0(v, t, latents), v, t, latents)
    return latents


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16, help="latent height and width (= low-res pixels)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--intervals", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's default")
    parser.add_argument("--quick", action="store_true", help="smoke check: 3 steps, 8x8 latents, one round")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.steps, args.rounds = 8, 3, 1
    if args.threads:
        torch.set_num_threads(args.threads)

    from vs_uav.core.models.unet_video import UNetVideoConfig, UNetVideoModel
    from vs_uav.core.scheduling import DDIMScheduler, SchedulerConfig

    torch.manual_seed(0)
    config = UNetVideoConfig.from_json_file(CONFIG)
    unet = UNetVideoModel(config).eval().requires_grad_(False)
    scheduler = DDIMScheduler(SchedulerConfig.from_json_file(SCHEDULER))
    g = torch.Generator().manual_seed(1)
    shape = (1, 4, 8, args.size, args.size)
    inputs = {
        "latents": torch.randn(shape, generator=g),
        "low_res": torch.randn((1, 3, *shape[2:]), generator=g).expand(2, -1, -1, -1, -1),
        "embeds": torch.randn((2, 77, config.cross_attention_dim), generator=g),
        "labels": torch.full((2,), 20),
    }

    best: dict[int, float] = {}
    finals: dict[int, torch.Tensor] = {}
    for _ in range(args.rounds):
        for interval in args.intervals:  # alternating, so slow spells hit every interval
            t0 = time.perf_counter()
            finals[interval] = render(unet, scheduler, inputs, args.steps, interval)
            best[interval] = min(best.get(interval, float("inf")), time.perf_counter() - t0)

    shallow = shallow_batch_times(unet, inputs, args.rounds + 1)

    base = args.intervals[0]
    print("## Step caching (`cache_interval`)\n")
    print(f"Full-size U-Net (official config, random weights, float32, CPU, {torch.get_num_threads()} threads), "
          f"one 8-frame window of {args.size}x{args.size} latents, guidance (batch 2), {args.steps} DDIM steps; "
          f"best of {args.rounds} alternating round(s). Deviation: final latents against "
          f"`cache_interval={base}` (random weights: a sanity figure, not the quality cost).\n")
    print("| cache_interval | full steps | time / render (s) | speed-up | max abs dev | mean abs dev |")
    print("|---|---|---|---|---|---|")
    for interval in args.intervals:
        dev = (finals[interval] - finals[base]).abs()
        full = len(range(0, args.steps, interval))
        finite = "" if torch.isfinite(finals[interval]).all() else " (not finite!)"
        print(f"| {interval} | {full}/{args.steps} | {best[interval]:.2f} | {best[base] / best[interval]:.2f}x | "
              f"{dev.max():.3e} | {dev.mean():.3e}{finite} |")
    # Reusing guidance's unconditional branch on the skipped steps would run their shallow
    # path on the conditional half only: the most it could save.
    t2, t1 = shallow
    last = args.intervals[-1]
    skipped = args.steps - len(range(0, args.steps, last))
    print(f"\nUnconditional-branch reuse on skipped steps (not implemented; measured to decide): a shallow call "
          f"takes {t2:.3f} s with guidance's batch of 2 and {t1:.3f} s with the conditional half alone, so at "
          f"`cache_interval={last}` it could save at most {skipped} x {t2 - t1:.3f} s = "
          f"{skipped * (t2 - t1):.2f} s of {best[last]:.2f} s (**{skipped * (t2 - t1) / best[last]:.0%}**), "
          "for a second approximation (a stale unconditional prediction).")
    return 0


@torch.no_grad()
def shallow_batch_times(unet, inputs: dict, rounds: int) -> tuple[float, float]:
    """Best seconds of one shallow (cached) U-Net call at batch 2 (guidance) and at batch 1."""
    from vs_uav.core.step_cache import DeepFeature

    x = inputs["latents"].expand(2, -1, -1, -1, -1)
    slot = DeepFeature()
    unet(x, 500, inputs["low_res"], inputs["embeds"], inputs["labels"], deep_cache=slot)  # a full call fills it
    times = {2: float("inf"), 1: float("inf")}
    for _ in range(rounds):
        for b in (2, 1):
            half = DeepFeature(slot.feature[-b:], reuse=True)  # the conditional half's feature at batch 1
            t0 = time.perf_counter()
            unet(x[-b:], 500, inputs["low_res"][-b:], inputs["embeds"][-b:], inputs["labels"][-b:], deep_cache=half)
            times[b] = min(times[b], time.perf_counter() - t0)
    return times[2], times[1]


if __name__ == "__main__":
    raise SystemExit(main())
