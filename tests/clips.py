"""Test clips spliced from the shared real videos with ffmpeg: the splice points are scene cuts
whose frame numbers are known, the excerpts continuous shots."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Sequence

VIDEOS = Path(__file__).resolve().parent.parent.parent / "shared" / "videos"
ANIMATION = VIDEOS / "old_animation_1.mp4"  # 320x240, 25 fps, with an audio track
AIGC = VIDEOS / "aigc_1.mp4"  # 256x256
MOVIE = VIDEOS / "old_movie_1.mp4"  # 480x352, old film: grain and flicker
ALL = (ANIMATION, AIGC, MOVIE)


def splice(out: Path, parts: Sequence[tuple[Path, int, int]], size: tuple[int, int], audio: bool = True) -> list[int]:
    """Excerpts (video, first frame, frame count), each scaled to ``size`` and retimed to 25 fps
    without dropping or repeating a frame, joined into ``out`` (H.264, with the animation's audio
    when ``audio``); returns the cut frames (where each excerpt after the first starts)."""
    inputs = sorted({p for p, _, _ in parts} | ({ANIMATION} if audio else set()))
    index = {p: i for i, p in enumerate(inputs)}
    w, h = size
    chains = [f"[{index[p]}:v]trim=start_frame={a}:end_frame={a + n},scale={w}:{h},setsar=1,setpts=N/25/TB[p{k}]"
              for k, (p, a, n) in enumerate(parts)]
    graph = ";".join(chains) + ";" + "".join(f"[p{k}]" for k in range(len(parts))) + \
        f"concat=n={len(parts)}:v=1:a=0,format=yuv420p[v]"
    args = ["ffmpeg", "-v", "error", "-y"]
    for p in inputs:
        args += ["-i", str(p)]
    args += ["-filter_complex", graph, "-map", "[v]"]
    if audio:
        args += ["-map", f"{index[ANIMATION]}:a", "-shortest", "-c:a", "aac"]
    args += ["-r", "25", "-c:v", "libx264", "-crf", "16", str(out)]
    subprocess.run(args, check=True, capture_output=True)
    cuts, at = [], 0
    for _, _, n in parts:
        at += n
        cuts.append(at)
    return cuts[:-1]


def framemd5(path: Path) -> list[str]:
    """The md5 of every decoded video frame, in order."""
    run = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:v:0", "-fps_mode", "passthrough",
                          "-f", "framemd5", "-"], capture_output=True, text=True, check=True)
    return [line.rsplit(",", 1)[1].strip() for line in run.stdout.splitlines() if line and not line.startswith("#")]
