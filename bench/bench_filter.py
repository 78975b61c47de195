"""Benchmarks of the VapourSynth filter (not tests: compare ratios taken within one run).
Writes a Markdown report to stdout.

    .venv/bin/python bench/bench_filter.py > bench/last-filter-run.md

Figures (tiny reference model, CPU, synthetic moving clip):
- the filter's overhead over calling UpscalePipeline directly on the same frames with the
  same chunking: every frame requested through vs_uav.upscale (format conversion, frame
  copies, chunk cache, props) vs one pipeline call; runs alternate, best of each is kept;
- peak resident memory rendering a 300-frame vs a 30-frame clip through the filter, each in
  a fresh process (VmHWM of that process).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
TINY = REPO.parent / "shared" / "reference" / "public" / "model"


def clip_of(frames: int, width: int, height: int):
    """A moving synthetic RGBS clip, painted on demand (the clip itself holds no frames)."""
    import numpy as np
    import vapoursynth as vs

    core = vs.core
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) / max(width, height) * 6
    blank = core.std.BlankClip(width=width, height=height, format=vs.RGBS, length=frames, fpsnum=25, fpsden=1)

    def paint(n: int, f):
        out = f.copy()
        for p, plane in enumerate((np.sin(x + 0.1 * n), np.cos(y - 0.07 * n), np.sin(x + y + 0.05 * n))):
            np.copyto(np.asarray(out[p]), 0.5 + 0.4 * plane)
        return out

    return core.std.ModifyFrame(blank, blank, paint)


def settings_kw(steps: int, chunk_size: int) -> dict:
    return dict(model=str(TINY), prompt="a test scene", steps=steps, guidance_scale=6.0, noise_level=120,
                propagation_steps=[steps - 1], flow="dis", chunk_size=chunk_size, device="cpu")


def render_all(clip) -> float:
    """Request every frame in order, as vspipe does; returns a checksum."""
    import numpy as np

    total = 0.0
    for f in clip.frames():
        total += float(np.asarray(f[0]).sum())
    return total


def overhead(frames: int, size: tuple[int, int], steps: int, chunk_size: int, rounds: int) -> dict:
    import numpy as np
    import torch

    from vs_uav.engine.cache import get_engine
    from vs_uav.settings import UpscaleSettings
    from vs_uav.vsfilter.upscale import upscale

    clip = clip_of(frames, *size)
    kw = settings_kw(steps, chunk_size)
    s = UpscaleSettings(**kw)
    engine, _ = get_engine(TINY, "3d", "cpu", "float32", "dis")
    # The pipeline's input: the same frames as the filter converts them.
    video = torch.from_numpy(np.stack([np.stack([np.asarray(f[p]) for p in range(3)]) for f in clip.frames()],
                                      axis=1)[None]) * 2 - 1
    t_filter, t_pipe = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        render_all(upscale(clip, **kw))  # a new filter instance each round: nothing cached
        t_filter.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = engine(video, s)  # the same settings, through the same chunk driver
        ((out.frames + 1) * 0.5).clamp(0, 1).numpy()  # the same final conversion the filter does
        t_pipe.append(time.perf_counter() - t0)
    return {"filter": min(t_filter), "pipeline": min(t_pipe), "all_filter": t_filter, "all_pipeline": t_pipe}


def memory_run(frames: int, size: tuple[int, int], steps: int, chunk_size: int) -> dict:
    from vs_uav.vsfilter.upscale import upscale

    sys.path.insert(0, str(REPO / "bench"))
    from bench_pipeline import peak_rss_kib

    t0 = time.perf_counter()
    render_all(upscale(clip_of(frames, *size), **settings_kw(steps, chunk_size)))
    return {"seconds": time.perf_counter() - t0, "peak_mib": peak_rss_kib() / 1024}


def memory_run_in_subprocess(**kw) -> dict:
    from bench_pipeline import in_subprocess

    return in_subprocess("bench_filter", "memory_run", **kw)


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--chunk-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    size = (48, 32)

    print(f"# Filter benchmark run\n\n- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"- machine: {platform.machine()}, {torch.get_num_threads()} torch threads; "
          f"torch {torch.__version__}; command: `{' '.join([Path(sys.executable).name] + sys.argv)}`")
    print(f"- tiny reference model, CPU float32, {size[0]}x{size[1]} -> {4 * size[0]}x{4 * size[1]}, "
          f"{args.steps} steps, guidance 6, propagation at the last step (DIS), chunk_size={args.chunk_size}\n")

    r = overhead(48, size, args.steps, args.chunk_size, args.rounds)
    print("## Filter overhead over the pipeline (48 frames, best of "
          f"{args.rounds} alternating rounds)\n")
    print("| path | seconds (best) | all rounds |\n|---|---|---|")
    print(f"| UpscalePipeline.__call__ | {r['pipeline']:.2f} | {', '.join(f'{t:.2f}' for t in r['all_pipeline'])} |")
    print(f"| vs_uav.upscale, every frame requested | {r['filter']:.2f} | "
          f"{', '.join(f'{t:.2f}' for t in r['all_filter'])} |")
    print(f"\noverhead: **{(r['filter'] / r['pipeline'] - 1) * 100:+.1f} %** (goal <= 5 %)\n")

    short = memory_run_in_subprocess(frames=30, size=size, steps=args.steps, chunk_size=args.chunk_size)
    long = memory_run_in_subprocess(frames=300, size=size, steps=args.steps, chunk_size=args.chunk_size)
    print("## Peak memory through the filter (fresh process each)\n")
    print("| frames | peak RSS (MiB) | seconds |\n|---|---|---|")
    for n, m in ((30, short), (300, long)):
        print(f"| {n} | {m['peak_mib']:.0f} | {m['seconds']:.1f} |")
    print(f"\npeak memory ratio 300/30 frames: **{long['peak_mib'] / short['peak_mib']:.3f}** (goal <= 1.15)")


if __name__ == "__main__":
    main()
