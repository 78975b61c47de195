"""The quality report's cost, memory and scale. Writes a Markdown report to stdout.

    .venv/bin/python bench/bench_report.py [--quick] > bench/last-report.md

1. Time per output frame at 1080p: a 480x270 excerpt of a shared video (x264) and its 4x
   upscale to 1920x1080 (Lanczos, x264 CRF 18: the size and kind of file a real render
   makes), measured with DIS and with RAFT (the full-size RAFT-large with random weights in
   the official layout: its cost does not depend on the weights). ``uav report`` runs in a
   fresh process per measure; the time of the measuring itself (the files opened, BestSource's
   index made) and of the whole command are given.
2. Memory flat in clip length: peak RSS of ``uav report`` (DIS) on 30 and on 300 frames of
   that 1080p pair.
3. Scale: each shared video (a 24-frame 128x96 excerpt) rendered by ``uav upscale`` with the
   tiny random reference model (4 steps), then reported. With random weights the numbers say
   nothing about quality; they show what the report prints. With real weights the same
   commands give the real figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
VIDEOS = REPO.parent / "shared" / "videos"
MODEL = REPO.parent / "shared" / "reference" / "public" / "model"
PY = sys.executable

# Run in a child: the report of one file pair, its time, its measuring time and its peak RSS.
CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from vs_uav.app.report import ReportJob, run_report
import vs_uav.media.quality as q

measured = {}
real_measure = q.measure
def timed(*a, **k):
    t = time.perf_counter()
    out = real_measure(*a, **k)
    measured["s"] = time.perf_counter() - t
    return out
q.measure = timed
src, out, report, flow, model = sys.argv[1:6]
t = time.perf_counter()
rep, _ = run_report(ReportJob(Path(src), (Path(out),), Path(report), flow=flow,
                              model_dir=Path(model) if model else None, scene_cuts="none"))
print(json.dumps({"total": time.perf_counter() - t, "measure": measured["s"], "frames": rep.measurements.frames,
                  "flow": rep.measurements.flow, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def pair_1080(folder: Path, frames: int) -> tuple[Path, Path]:
    """A 480x270 source of ``frames`` frames and its 1920x1080 Lanczos upscale, both x264."""
    src, out = folder / f"src{frames}.mp4", folder / f"out{frames}.mp4"
    _ffmpeg("-stream_loop", "-1", "-i", str(VIDEOS / "old_animation_1.mp4"), "-frames:v", str(frames), "-an",
            "-vf", "scale=480:270", "-c:v", "libx264", "-crf", "16", str(src))
    _ffmpeg("-i", str(src), "-vf", "scale=1920:1080:flags=lanczos", "-c:v", "libx264", "-crf", "18", "-preset",
            "veryfast", str(out))
    return src, out


def child(src: Path, out: Path, report: Path, flow: str, model: str = "") -> dict:
    run = subprocess.run([PY, "-c", CHILD, str(src), str(out), str(report), flow, model], capture_output=True,
                         text=True, cwd=REPO)
    if run.returncode:
        raise SystemExit(run.stderr[-2000:])
    return json.loads(run.stdout.strip().splitlines()[-1])


def raft_folder(folder: Path) -> Path:
    """A model folder holding only a random full-size RAFT-large in the official layout."""
    import torch

    from vs_uav.core.models.raft import RAFT

    torch.manual_seed(0)
    model = RAFT()
    path = folder / "raft_model" / "propagator" / "raft-things.pth"
    path.parent.mkdir(parents=True)
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, path)
    return path.parent.parent


def speed(folder: Path, quick: bool) -> list[str]:
    n = 20 if quick else 60
    src, out = pair_1080(folder, n)
    rows = ["| flow | frames | measuring s/frame | whole command s/frame | peak RSS MiB |", "|---|---|---|---|---|"]
    dis = child(src, out, folder / "dis.json", "dis")
    rows.append(f"| DIS | {n} | {dis['measure'] / n:.3f} | {dis['total'] / n:.3f} | {dis['rss_mib']:.0f} |")
    few = 4 if quick else 8
    rsrc, rout = pair_1080(folder, few)
    raft = child(rsrc, rout, folder / "raft.json", "raft", str(raft_folder(folder)))
    rows.append(f"| RAFT-large | {few} | {raft['measure'] / few:.3f} | {raft['total'] / few:.3f} | "
                f"{raft['rss_mib']:.0f} |")
    minutes = 2 * 60 * 24  # a two-minute clip at 24 fps
    rows += ["", f"A two-minute 1080p output (2880 frames at 24 fps): about {dis['measure'] * minutes / n / 60:.0f} min "
                 f"with DIS, {raft['measure'] * minutes / few / 3600:.1f} h with RAFT on this CPU."]
    return rows


def memory(folder: Path, quick: bool) -> list[str]:
    short, long = (10, 100) if quick else (30, 300)
    got = {}
    for n in (short, long):
        src, out = pair_1080(folder, n)
        got[n] = child(src, out, folder / f"mem{n}.json", "dis")
    ratio = got[long]["rss_mib"] / got[short]["rss_mib"]
    return ["| frames (1080p output) | peak RSS MiB | seconds |", "|---|---|---|",
            *(f"| {n} | {got[n]['rss_mib']:.0f} | {got[n]['total']:.1f} |" for n in (short, long)),
            "", f"Peak RSS ratio {long} / {short} frames: {ratio:.2f}."]


def scale(folder: Path) -> list[str]:
    rows = ["| video | PSNR-LR dB | SSIM-LR | E*warp | E*warp bicubic | flicker (source) | colour shift R / G / B |",
            "|---|---|---|---|---|---|---|"]
    for video in sorted(VIDEOS.glob("*.mp4")):
        src = folder / f"{video.stem}.mkv"
        _ffmpeg("-i", str(video), "-frames:v", "24", "-an", "-vf", "scale=128:96", "-c:v", "ffv1", str(src))
        out = folder / f"{video.stem}.uav.mkv"
        subprocess.run([PY, "-m", "vs_uav", "upscale", str(src), "-o", str(out), "--model", str(MODEL), "--steps", "4",
                        "--propagation-steps", "3", "--prompt", "", "--audio", "none"], check=True, cwd=REPO,
                       capture_output=True)
        rep = folder / f"{video.stem}.json"
        subprocess.run([PY, "-m", "vs_uav", "report", str(src), str(out), "-o", str(rep), "--flow", "dis"],
                       check=True, cwd=REPO, capture_output=True)
        f = json.loads(rep.read_text())["outputs"][0]["clip"]
        shift = " / ".join(f"{v:+.2f}" for v in f["colour_shift"])
        rows.append(f"| {video.name} | {f['psnr']:.2f} | {f['ssim']:.4f} | {f['ewarp']:.3f} | {f['ewarp_bicubic']:.3f} "
                    f"| {f['flicker']:.3f} ({f['flicker_source']:.3f}) | {shift} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames (a smoke run)")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        lines = [f"## Quality report (`bench/bench_report.py`), {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
                 "no GPU", "", "### Time per output frame at 1080p (480x270 source)", "", *speed(folder, args.quick),
                 "", "### Memory against clip length (DIS)", "", *memory(folder, args.quick), "",
                 "### The shared videos rendered with the tiny random model (4 steps, 128x96 excerpts of 24 frames)",
                 "", *scale(folder)]
    lines += ["", f"Bench time: {time.monotonic() - started:.0f} s."]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
