"""A 4K 16-bit DPX sequence streams: reading it the way a render's script does (BestSource,
libavformat's image2 reader, from the first file's number) holds BestSource's frame cache in
memory, not the sequence: the peak is the same for a sequence twice as long. Writes N frames of
4096x2160 RGB 16-bit DPX (about 53 MB each) for each length, reads every frame through the
script's reading lines in a fresh process and reports its peak memory against the sequence's
size on disk.

    .venv/bin/python bench/bench_sequence.py [--frames 48,96] [--folder /tmp/uav-bench-dpx]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

READ = r"""
import json, resource, sys, time
import vapoursynth as vs
from vs_uav.media.sequence import find_sequence, fps_line, reading_lines, DEFAULT_FPS
core = vs.core
namespace = {"core": core, "vs": vs}
exec("\n".join(reading_lines(find_sequence(sys.argv[1])) + [fps_line(DEFAULT_FPS)]), namespace)
clip = namespace["clip"]
start = time.monotonic()
for frame in clip.frames(close=True):
    pass
print(json.dumps({"frames": clip.num_frames, "format": clip.format.name, "width": clip.width,
                  "seconds": time.monotonic() - start,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make(folder: Path, frames: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pattern = folder / "reel1_%07d.dpx"
    if len(list(folder.glob("reel1_*.dpx"))) != frames:
        for old in folder.glob("reel1_*.dpx"):
            old.unlink()
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=4096x2160:rate=24",
                        "-frames:v", str(frames), "-pix_fmt", "rgb48le", "-start_number", "86400", str(pattern)],
                       check=True)
    return pattern


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", default="48,96", help="sequence lengths, comma-separated")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/uav-bench-dpx"))
    args = parser.parse_args()
    for frames in map(int, args.frames.split(",")):
        measure(args.folder / str(frames), frames)


def measure(folder: Path, frames: int) -> None:
    started = time.monotonic()
    pattern = make(folder, frames)
    made = time.monotonic() - started
    size = sum(p.stat().st_size for p in folder.glob("reel1_*.dpx"))
    run = subprocess.run([sys.executable, "-c", READ, str(pattern)], capture_output=True, text=True, check=True)
    result = json.loads(run.stdout)
    print(f"{result['frames']} frames of {result['width']}-wide {result['format']} DPX, {size / 2**30:.2f} GiB on "
          f"disk (written in {made:.0f} s); read in {result['seconds']:.1f} s "
          f"({result['frames'] / result['seconds']:.1f} fps), peak memory of the reading process "
          f"{result['peak_mib']:.0f} MiB ({result['peak_mib'] * 2**20 / size:.1%} of the sequence)")


if __name__ == "__main__":
    main()
