"""How much chunking changes the frames, and what look-ahead buys back (tiny model, CPU).

A 48-frame moving scene rendered in chunks of 8 against the same render in one chunk (the
official algorithm), for several ``lookahead`` values, with and without propagation: the
largest and the mean per-frame deviation (0-255 scale) and the time ratio.

    .venv/bin/python bench/bench_chunking.py [--steps 4 10] [--lookahead 0 8 16 32]

The tiny model has random weights, which amplify small differences far more than trained
weights do: read the figures as an upper bound of the boundary effect's shape, not its size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
TINY = REPO.parent / "shared" / "reference" / "public" / "model"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 10])
    parser.add_argument("--lookahead", type=int, nargs="+", default=[0, 8, 16, 32])
    parser.add_argument("--frames", type=int, default=48)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "tests"))
    from test_streaming import moving_scene

    from vs_uav.engine.pipeline import UpscalePipeline

    torch.set_num_threads(1)
    pipe = UpscalePipeline.from_pretrained(TINY, vae="3d", flow="dis")
    video = moving_scene(args.frames, 16, 16)
    print("| steps | propagation | lookahead | max dev (/255) | mean dev (/255) | frames exact | time ratio |")
    print("|---|---|---|---|---|---|---|")
    for steps in args.steps:
        for prop in ([], [steps - 1]):
            kw = dict(prompt="a koala", steps=steps, guidance_scale=4.0, noise_level=100, seed=3,
                      propagation_steps=prop)
            t0 = time.perf_counter()
            whole = pipe(video, chunk_size=args.frames, **kw).frames
            t_whole = time.perf_counter() - t0
            for lookahead in args.lookahead:
                t0 = time.perf_counter()
                chunked = pipe(video, chunk_size=8, lookahead=lookahead, **kw).frames
                ratio = (time.perf_counter() - t0) / t_whole
                dev = ((whole - chunked).abs() * 127.5).amax(dim=(0, 1, 3, 4))
                exact = int((dev == 0).sum())
                print(f"| {steps} | {prop or '-'} | {lookahead} | {dev.max():.1f} | {dev.mean():.2f} | "
                      f"{exact}/{args.frames} | {ratio:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
