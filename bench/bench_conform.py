"""The conform's plan on a feature-like edit: 200 clips of 2-6 s from 10 sources of 20 minutes
(25 fps, tiny frames: the plan reads the timeline and probes the sources, it decodes nothing
else), some with dissolves and speed changes. Prints the frames the plan renders against the
frames of the whole sources, the planning time (the first plan probes the sources, which
BestSource indexes; a second plan finds BestSource's index cache), and the time the render
spends first putting the pieces' starts on their scenes' window grid (align_plan: the sources
have no cut, so each piece looks back the whole 10 s; H.264 with 250-frame GOPs).

    .venv/bin/python bench/bench_conform.py [--folder /tmp/uav-bench-conform]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import time
from pathlib import Path

import opentimelineio as otio

from vs_uav.app.conform import align_plan, plan_conform

R = 25
SOURCES, MINUTES, CLIPS = 10, 20, 200


def make_sources(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(SOURCES):
        path = folder / f"reel{i:02d}.mkv"
        if not path.exists():
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size=32x24:rate={R}",
                            "-t", str(MINUTES * 60), "-c:v", "libx264", "-preset", "ultrafast", "-g", "250",
                            str(path)], check=True)
        paths.append(path)
    return paths


def make_edit(sources: list[Path], path: Path) -> None:
    rng = random.Random(0)
    track = otio.schema.Track(kind=otio.schema.TrackKind.Video)
    length = MINUTES * 60 * R
    for n in range(CLIPS):
        duration = rng.randint(2 * R, 6 * R)
        start = rng.randint(0, length - 4 * duration)
        clip = otio.schema.Clip(name=f"shot{n:03d}", media_reference=otio.schema.ExternalReference(
            target_url=str(rng.choice(sources))), source_range=otio.opentime.TimeRange(
                otio.opentime.RationalTime(start, R), otio.opentime.RationalTime(duration, R)))
        if n % 17 == 5:
            clip.effects.append(otio.schema.LinearTimeWarp(time_scalar=0.5))
        if n and n % 11 == 0:
            track.append(otio.schema.Transition(in_offset=otio.opentime.RationalTime(12, R),
                                                out_offset=otio.opentime.RationalTime(12, R)))
        track.append(clip)
    timeline = otio.schema.Timeline(name="feature")
    timeline.tracks.append(track)
    otio.adapters.write_to_file(timeline, str(path))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folder", type=Path, default=Path("/tmp/uav-bench-conform"))
    args = parser.parse_args()
    t0 = time.monotonic()
    sources = make_sources(args.folder)
    made = time.monotonic() - t0
    edit = args.folder / "feature.otio"
    make_edit(sources, edit)
    t1 = time.monotonic()
    plan = plan_conform(edit)
    first = time.monotonic() - t1
    t2 = time.monotonic()
    plan_conform(edit)
    second = time.monotonic() - t2
    t3 = time.monotonic()
    aligned = align_plan(plan, "auto", 0.1)
    align = time.monotonic() - t3
    print(f"sources: {SOURCES} x {MINUTES} min at {R} fps (made in {made:.0f} s); edit: {CLIPS} clips")
    print(plan.summary())
    print(f"planning: {first:.1f} s the first time (probing, BestSource indexing each source), "
          f"{second:.1f} s again")
    moved = sum(a.start != p.start for a, p in zip(aligned.pieces, plan.pieces))
    print(f"before rendering, the starts put on their scenes' window grid: {align:.1f} s for {len(plan.pieces)} "
          f"pieces ({align / len(plan.pieces):.2f} s each; {moved} moved, by "
          f"{sum(p.start - a.start for a, p in zip(aligned.pieces, plan.pieces))} frames in all)")


if __name__ == "__main__":
    main()
