"""Benchmark of the scene-cut detector (vs_uav.vsfilter.scenes): how right it is on a labelled set, and
what it costs per frame. Writes a Markdown report to stdout.

    .venv/bin/python bench/bench_scenes.py > bench/last-scenes-run.md

The labelled set (tests/cut_set.py, 181 frames, H.264 at 96x72): shots spliced from the three
shared videos (cuts), limited animation made of old_animation_1's drawings held 2-5 frames and
then replaced (drawing changes: not cuts), and two cuts between shots of similar colour (a
close-up of the cartoon after the cartoon, the old film after itself mirrored). The three
shared videos, each one shot, count as non-cuts too.

- precision and recall of the rule before (luma difference and the ratio to its neighbours
  only: ``cover`` ignored) and now (most of the picture must have changed), at thresholds
  around the default;
- the detector's CPU time per frame: the former graph (grey copy and ``PlaneStats``) and the
  current one (plus the block-wise share), at 96x72 and 1920x1080, over a blank source (the
  work does not depend on the picture), with decoding the set for scale; ``--threads``
  VapourSynth threads (default 1), best of ``--rounds``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import cut_set  # noqa: E402
import vapoursynth as vs  # noqa: E402
from clips import ALL  # noqa: E402

from vs_uav.vsfilter import scenes

core = vs.core


def measures(clip: vs.VideoNode, threshold: float) -> list[tuple[float, float]]:
    """(difference, cover) of every frame."""
    key = scenes._PROP
    return [(f.props[f"{key}Diff"], f.props[f"{key}CoverAverage"])
            for f in scenes._differences(clip, threshold).frames(close=True)]


def found(props: list[tuple[float, float]], threshold: float, use_cover: bool) -> list[int]:
    diffs = [d for d, _ in props]
    return [n for n, (d, c) in enumerate(props)
            if scenes.is_cut(n, d, [diffs[j] for j in scenes._window(n, len(diffs))], threshold,
                             c if use_cover else 1.0)]


def score(found_cuts: set[int], true_cuts: set[int], elsewhere: int = 0) -> tuple[float, float]:
    """Precision and recall; ``elsewhere``: false cuts found in clips without a cut."""
    hits = len(found_cuts & true_cuts)
    claimed = len(found_cuts) + elsewhere
    return (hits / claimed if claimed else 1.0), (hits / len(true_cuts) if true_cuts else 1.0)


def accuracy(labelled: vs.VideoNode, labels: cut_set.Labels, thresholds: list[float]) -> list[str]:
    shared = [core.bs.VideoSource(str(v)) for v in ALL]
    rows = ["| rule | threshold | precision | recall | false cuts (set) | false cuts (shared videos) | missed |",
            "|---|---|---|---|---|---|---|"]
    for threshold in thresholds:
        props = measures(labelled, threshold)
        shared_props = [measures(c, threshold) for c in shared]
        for name, use_cover in (("before: difference and ratio", False), ("now: + most of the picture", True)):
            cuts, truth = set(found(props, threshold, use_cover)), set(labels.cuts)
            extra = sum(len(found(p, threshold, use_cover)) for p in shared_props)
            precision, recall = score(cuts, truth, extra)
            false = sorted(cuts - truth)
            rows.append(f"| {name} | {threshold:g} | {precision:.2f} | {recall:.2f} | {len(false)} "
                        f"({', '.join(map(str, false)) or '-'}) | {extra} | {len(truth - cuts)} |")
    return rows


def former(clip: vs.VideoNode) -> vs.VideoNode:
    """The detector's graph before the block-wise share: grey copy and PlaneStats only."""
    width = min(scenes.DETECT_WIDTH, clip.width)
    height = max(1, round(clip.height * width / clip.width))
    grey = core.resize.Bilinear(core.std.ShufflePlanes(clip, 0, vs.GRAY), width, height, format=vs.GRAY8)
    return core.std.PlaneStats(grey, grey[0] + grey[:-1], prop=scenes._PROP)


def timed(node: vs.VideoNode, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in node.frames(close=True):
            pass
        best = min(best, time.process_time() - start)
    return best


def cost(path: Path, rounds: int) -> list[str]:
    """CPU ms per frame: decoding the set (scaled), and each detector's graph over a blank source
    of the same size (the work does not depend on the picture: a resize, PlaneStats, Expr), its
    frames requested one after another."""
    rows = ["| size | decoding the set (ms/frame) | former detector (ms/frame) | current detector (ms/frame) |",
            "|---|---|---|---|"]
    for size in ((96, 72), (1920, 1080)):
        src = core.bs.VideoSource(str(path))
        if size != (src.width, src.height):
            src = core.resize.Bicubic(src, *size)
        blank = core.std.BlankClip(src, length=2000)
        nodes = (former(blank), scenes._differences(blank))
        best = [float("inf")] * len(nodes)
        for _ in range(rounds):  # alternating, so that a busy moment does not favour one
            best = [min(b, timed(node, 1)) for b, node in zip(best, nodes)]
        old, new = (1000 * t / blank.num_frames for t in best)
        rows.append(f"| {size[0]}x{size[1]} | {1000 * timed(src, 1) / src.num_frames:.3f} | {old:.3f} | {new:.3f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    core.num_threads = args.threads
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cut-set.mp4"
        labels = cut_set.build(path)
        labelled = core.bs.VideoSource(str(path))
        print(f"# Scene-cut detector ({platform.machine()}, {args.threads} VapourSynth thread(s))\n")
        shared = sum(core.bs.VideoSource(str(v)).num_frames for v in ALL)
        print(f"Labelled set: {labels.frames} frames, cuts at {labels.cuts}, drawing changes (not cuts) at "
              f"{labels.changes}; plus the three shared videos ({shared} frames, no cut).\n")
        print("\n".join(accuracy(labelled, labels, args.thresholds)))
        print()
        print("\n".join(cost(path, args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
