"""The ``uav`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

logger = logging.getLogger("vs_uav")

REPO = Path(__file__).resolve().parent.parent
DEMO_VIDEO = REPO.parent / "shared" / "videos" / "old_animation_1.mp4"
DEMO_MODEL = REPO.parent / "shared" / "reference" / "public" / "model"


def _read_clip(path: Path, width: int, height: int, frames: int):
    """Frames of a video file as a (1, 3, T, H, W) float tensor in [-1, 1], via VapourSynth."""
    import numpy as np
    import torch
    import vapoursynth as vs

    core = vs.core
    clip = core.bs.VideoSource(str(path))
    clip = clip[: min(frames, clip.num_frames)]
    clip = core.resize.Bicubic(clip, width, height, format=vs.RGBS, matrix_in_s="709")
    planes = [np.stack([np.asarray(f[p]) for p in range(3)]) for f in clip.frames()]
    video = torch.from_numpy(np.stack(planes, axis=1)).unsqueeze(0)
    return video * 2 - 1, clip.fps


def _write_video(frames, fps, out: Path) -> None:
    """Encode (1, 3, T, H, W) frames in [-1, 1] to ``out`` with ffmpeg (x264, lossless-ish)."""
    import numpy as np

    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise SystemExit("uav: ffmpeg not found; install it (e.g. apt-get install ffmpeg)")
    rgb = ((frames[0].permute(1, 2, 3, 0).clamp(-1, 1) + 1) * 127.5).round().to(dtype=__import__("torch").uint8)
    t, h, w, _ = rgb.shape
    cmd = [ffmpeg, "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
           "-r", f"{fps.numerator}/{fps.denominator}", "-i", "-", "-c:v", "libx264", "-crf", "12",
           "-pix_fmt", "yuv444p", str(out)]
    subprocess.run(cmd, input=np.ascontiguousarray(rgb.numpy()).tobytes(), check=True)


def cmd_demo(args: argparse.Namespace) -> int:
    """Upscale a few frames of a real video with the tiny reference model."""
    from .pipeline import UpscalePipeline

    model = Path(args.model)
    video_path = Path(args.input)
    for p, what in ((model, "model folder"), (video_path, "input video")):
        if not p.exists():
            raise SystemExit(f"uav demo: {what} {p} not found")
    video, fps = _read_clip(video_path, args.width, args.height, args.frames)
    pipe = UpscalePipeline.from_pretrained(model, vae=args.vae)
    t0 = time.perf_counter()

    def progress(done: int, total: int, chunk: int, chunks: int) -> None:
        print(f"\rchunk {chunk + 1}/{chunks}: denoising step {done}/{total}", end="", file=sys.stderr, flush=True)

    out = pipe(video, prompt="an old animation, best quality, extremely detailed", num_inference_steps=args.steps,
               guidance_scale=6.0, noise_level=120, seed=args.seed, callback=progress)
    print(file=sys.stderr)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    _write_video(out.frames, fps, Path(args.output))
    t, h, w = out.frames.shape[2:]
    print(f"uav demo: {video.shape[2]} frames {args.width}x{args.height} -> {w}x{h} in "
          f"{time.perf_counter() - t0:.1f} s, written to {args.output}")
    if model.resolve() == DEMO_MODEL.resolve():
        print("uav demo: the reference model has tiny random weights: this checks the whole path, "
              "the pictures are meaningless. Real weights: `uav download` (planned).")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uav", description="Upscale-A-Video video super-resolution")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and details to stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="upscale a few frames of a real clip with the tiny reference model")
    demo.add_argument("--model", default=os.environ.get("UAV_MODEL_DIR", str(DEMO_MODEL)))
    demo.add_argument("--input", default=str(DEMO_VIDEO))
    demo.add_argument("--output", default=str(REPO / "out" / "demo.mp4"))
    demo.add_argument("--frames", type=int, default=12)
    demo.add_argument("--width", type=int, default=64)
    demo.add_argument("--height", type=int, default=48)
    demo.add_argument("--steps", type=int, default=4)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--vae", default="3d", choices=["3d", "video"])
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)
