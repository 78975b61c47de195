"""Benchmark of `uav upscale --cluster` (not a test: compare ratios taken within one run).
Writes a Markdown report to stdout.

    .venv/bin/python bench/bench_cluster.py > bench/last-cluster-run.md

A clip of real footage (``--frames``, default 100: shots of 25 frames spliced from the shared
videos, 64x48 -> 256x192, FFV1), the tiny reference model, ``--steps`` denoising steps (default 8:
with fewer, fixed costs of ~10 s, Ray and worker start, dominate the job; real use runs 20-30 on a
far larger model), DIS flow, on a local Ray instance (127.0.0.1):

- throughput, 2 workers vs 1, with one core per worker (as GPUs: a worker per device), and with
  the machine's cores shared (1 worker with every core vs 2 with half each);
- overhead of the cluster path (Ray, worker start, segments, the join) over the one-machine
  `uav upscale` with the same threads, from `uav upscale` starting to the output written;
- peak resident memory per worker (the largest a worker process reached, from its log line).

Each configuration runs ``--rounds`` times, alternating; the best time of each is kept.
``--quick``: a smoke check of the script (1 round, 1 step, 24 frames), not a measurement.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
TINY = REPO.parent / "shared" / "reference" / "public" / "model"
UAV = str(Path(sys.executable).parent / "uav")

from clips import AIGC, ANIMATION, MOVIE, framemd5, splice  # noqa: E402

from vs_uav.media.probe import count_frames


def run(args: list[str], cores: list[int], env: dict) -> tuple[float, str]:
    started = time.monotonic()
    r = subprocess.run(["taskset", "-c", ",".join(map(str, cores)), *args], capture_output=True, text=True, env=env)
    seconds = time.monotonic() - started
    if r.returncode:
        raise SystemExit(f"bench_cluster: {' '.join(args)} failed:\n{r.stderr[-2000:]}")
    return seconds, r.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="denoising steps (default: 8)")
    parser.add_argument("--frames", type=int, default=100, help="frames of the clip, >= 96 (default: 100)")
    parser.add_argument("--quick", action="store_true", help="smoke check: 1 round, 1 step, 24 frames")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps, args.frames = 1, 1, 24
    elif args.frames < 96:
        raise SystemExit(f"bench_cluster: --frames {args.frames}: accepted: 96 or more (fewer: fixed costs dominate)")
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("bench_cluster: needs at least 2 cores")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    tmp = Path(tempfile.mkdtemp(prefix="uav-bench-cluster-"))
    clip = tmp / "clip.mkv"
    shots = [(ANIMATION, 0), (AIGC, 0), (ANIMATION, 40), (MOVIE, 0)]  # repeated as often as --frames needs
    lengths = [min(25, args.frames - i) for i in range(0, args.frames, 25)]
    cuts = splice(clip, [(*shots[k % len(shots)], n) for k, n in enumerate(lengths)], (64, 48))
    frames = count_frames(clip)
    common = ["-v", "upscale", str(clip), "--model", str(TINY), "--steps", str(args.steps), "--flow", "dis",
              "--codec", "ffv1"]
    cluster = ["--cluster", "local", "--segment-seconds", "1"]  # 25 frames: one shot each
    configs = {
        # name: (arguments, cores, OMP threads for the one-machine render)
        "one machine, 1 core": ([*common], cores[:1], "1"),
        "cluster, 1 worker x 1 core": ([*common, *cluster, "--workers", "1"], cores[:1], None),
        "cluster, 2 workers x 1 core": ([*common, *cluster, "--workers", "2"], cores[:2], None),
        "one machine, 2 cores": ([*common], cores[:2], "2"),
        "cluster, 1 worker x 2 cores": ([*common, *cluster, "--workers", "1"], cores[:2], None),
    }
    times: dict[str, list[float]] = {name: [] for name in configs}
    peaks: dict[str, int] = {}
    hashes: dict[str, list[str]] = {}
    for _ in range(args.rounds):
        for name, (cmd, use, threads) in configs.items():
            out = tmp / f"{len(times[name])}-{re.sub(r'[^a-z0-9]+', '-', name)}.mkv"
            e = {**env, **({"OMP_NUM_THREADS": threads} if threads else {})}
            seconds, log = run([UAV, *cmd, "-o", str(out)], use, e)
            times[name].append(seconds)
            rss = [float(m) for m in re.findall(r"peak memory (\d+) MiB", log)]
            if rss:
                peaks[name] = max(peaks.get(name, 0), int(max(rss)))
            hashes[name] = framemd5(out)
            out.unlink()
    shutil.rmtree(tmp, ignore_errors=True)
    best = {name: min(t) for name, t in times.items()}
    one_core = hashes["one machine, 1 core"] == hashes["cluster, 1 worker x 1 core"] == \
        hashes["cluster, 2 workers x 1 core"]
    two_core = hashes["one machine, 2 cores"] == hashes["cluster, 1 worker x 2 cores"]

    print(f"## {date.today().isoformat()}, cluster (local Ray, {platform.machine()}, {len(cores)} cores, "
          f"{platform.python_version()})\n")
    print(f"`.venv/bin/python bench/bench_cluster.py`: {frames} frames of real footage in {len(lengths)} shots "
          f"(cuts at {', '.join(map(str, cuts))}), 64x48 -> 256x192, tiny reference model, {args.steps} steps, "
          f"DIS flow, FFV1; wall time of `uav upscale` from start to the verified output, best of {args.rounds}.\n")
    print("| configuration | seconds (best) | all rounds | frames/s | peak RSS per worker (MiB) |")
    print("|---|---|---|---|---|")
    for name in configs:
        peak = str(peaks[name]) if name in peaks else "-"
        print(f"| {name} | {best[name]:.1f} | {', '.join(f'{t:.1f}' for t in times[name])} | "
              f"{frames / best[name]:.2f} | {peak} |")
    print()
    two, one, shared = (best["cluster, 2 workers x 1 core"], best["cluster, 1 worker x 1 core"],
                        best["cluster, 1 worker x 2 cores"])
    print(f"- throughput, 2 workers / 1 worker, one core each: **{one / two:.2f}x**")
    print(f"- throughput, 2 workers x 1 core / 1 worker x 2 cores: **{shared / two:.2f}x**")
    print(f"- overhead of the cluster path, 1 worker x 1 core vs one machine on 1 core: "
          f"**{best['cluster, 1 worker x 1 core'] - best['one machine, 1 core']:+.1f} s** "
          f"({(best['cluster, 1 worker x 1 core'] / best['one machine, 1 core'] - 1) * 100:+.0f} %)")
    print(f"- overhead, 1 worker x 2 cores vs one machine on 2 cores: "
          f"**{best['cluster, 1 worker x 2 cores'] - best['one machine, 2 cores']:+.1f} s** "
          f"({(best['cluster, 1 worker x 2 cores'] / best['one machine, 2 cores'] - 1) * 100:+.0f} %)")
    print(f"- frames identical to the one-machine render with the same threads: 1 core {one_core}, "
          f"2 cores {two_core}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
