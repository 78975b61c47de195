"""Seconds per output frame and peak device memory on a GPU, with the full-size model (random weights).

480x270 -> 1920x1080, one default chunk (32 frames + 8 look-ahead), guidance 6: the U-Net for
float16 and bfloat16, compile off and on, cache_interval 1 and 3, and under max_memory=8; the
float32 VAE decode; and the decode overlap (ChunkDriver over two chunks, overlap on and off).
The U-Net runs ``--steps`` steps (a multiple of 3 keeps cache_interval=3's ratio of full to
cached steps) and is scaled to the real workload's 30 steps. Prints a Markdown table.

    python bench/bench_device.py                 # a CUDA GPU (bench/device.sh runs this)
    python bench/bench_device.py --cpu-smoke     # the script's logic: tiny model, CPU, seconds

Also bfloat16 with offload and with fp8 weights (peak memory is what they change).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from vs_uav.engine.driver import ChunkDriver
from vs_uav.engine.pipeline import UpscalePipeline
from vs_uav.settings import UpscaleSettings

REAL_STEPS = 30
GIB = 1 << 30


def scene(t: int, h: int, w: int) -> torch.Tensor:
    """A smooth random clip in [-1, 1] (content does not change the speed)."""
    g = torch.Generator().manual_seed(0)
    small = torch.rand(1, 3 * t, h // 8 + 1, w // 8 + 1, generator=g)
    big = torch.nn.functional.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return (big.reshape(1, 3, t, h, w) * 2 - 1).clamp(-1, 1)


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.smoke = args.cpu_smoke
        self.device = torch.device("cpu" if self.smoke else "cuda")
        self.started = time.monotonic()
        self.pipes: dict[tuple[str, str], UpscalePipeline] = {}
        self.decoded: dict[float, tuple[float, str]] = {}  # max_memory -> (s/frame, peak)
        # Full: the default chunk. Smoke: tiny frames, a short chunk.
        self.width, self.height = (16, 16) if self.smoke else (480, 270)
        self.chunk, self.lookahead = (8, 0) if self.smoke else (32, 8)
        self.video = scene(2 * self.chunk + self.lookahead, self.height, self.width)

    # -- helpers -------------------------------------------------------------------------------

    def over_budget(self) -> bool:
        return time.monotonic() - self.started > self.args.budget

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> str:
        return f"{torch.cuda.max_memory_allocated() / GIB:.1f}" if self.device.type == "cuda" else "n/a"

    def pipe(self, dtype: str, weights: str = "default") -> UpscalePipeline:
        # fp8 weights cannot be turned back on a loaded model: a model of its own.
        if (dtype, weights) not in self.pipes:
            self.pipes.clear()  # one model in memory at a time
            self.pipes[dtype, weights] = UpscalePipeline.from_pretrained(self.args.model, device=self.device,
                                                                         dtype=dtype)
        return self.pipes[dtype, weights]

    def settings(self, **changes) -> UpscaleSettings:
        return UpscaleSettings(steps=self.args.steps, guidance_scale=6.0, chunk_size=self.chunk,
                               lookahead=self.lookahead, device=str(self.device), **changes)

    def timed(self, fn):
        self.sync()
        t = time.perf_counter()
        out = fn()
        self.sync()
        return out, time.perf_counter() - t

    # -- measurements --------------------------------------------------------------------------

    def unet_row(self, dtype: str, compile: bool, cache_interval: int, max_memory: float,
                 weights: str = "default", offload: bool = False) -> dict:
        row = dict(dtype=dtype, compile=compile, cache_interval=cache_interval, max_memory=max_memory,
                   weights=weights, offload=offload)
        if self.smoke and (compile or dtype == "float16"):
            return {**row, "note": "not in --cpu-smoke (compiling, float16: slow on the CPU)"}
        if dtype == "bfloat16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return {**row, "note": "bfloat16 not supported by this GPU"}
        if self.over_budget():
            return {**row, "note": f"skipped: past the {self.args.budget:.0f} s budget"}
        try:
            pipe = self.pipe(dtype, weights)
            settings = self.settings(compile=compile, cache_interval=cache_interval, max_memory=max_memory,
                                     weights=weights, offload=offload)
            pipe.configure(settings)
            n = self.chunk + self.lookahead

            def run():
                return pipe.upscale_chunk(self.video[:, :, :n], 0, settings, decode=False, end=self.chunk)[0]

            _, first = self.timed(run)  # warm-up: cuDNN choices, compilation
            self.reset_peak()
            out, seconds = self.timed(run)
            unet = seconds / self.chunk * REAL_STEPS / self.args.steps
            decode = self.decode_seconds(max_memory)
            note = "" if torch.isfinite(out.latents).all() else "latents not finite (random weights)"
            return {**row, "unet": unet, "decode": decode[0], "first": first, "peak_unet": self.peak(),
                    "peak_decode": decode[1], "note": note}
        except Exception as e:  # one row's failure (e.g. out of memory) is reported, the others still run
            return {**row, "note": f"failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:120] if str(e).strip() else ''}"}
        finally:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def decode_seconds(self, max_memory: float) -> tuple[float, str]:
        """The float32 VAE decode per frame (the same for every U-Net dtype), measured once per budget."""
        if max_memory not in self.decoded:
            pipe = next(iter(self.pipes.values()))
            settings = self.settings(max_memory=max_memory)
            g = torch.Generator().manual_seed(1)
            latents = torch.randn(1, 4, self.chunk, self.height, self.width, generator=g)
            video = self.video[:, :, :self.chunk]
            self.timed(lambda: pipe.decode(latents[:, :, :3], video[:, :, :3], settings))  # warm-up
            self.reset_peak()
            _, seconds = self.timed(lambda: pipe.decode(latents, video, settings))
            self.decoded[max_memory] = (seconds / self.chunk, self.peak())
        return self.decoded[max_memory]

    def overlap(self) -> str:
        """Two chunks through the chunk driver, decode overlap off then on (wall seconds), with
        the model loaded last (no reload)."""
        if self.over_budget() or not self.pipes:
            return f"skipped: past the {self.args.budget:.0f} s budget" if self.pipes else "skipped: no model ran"
        (dtype, weights), pipe = next(iter(self.pipes.items()))
        settings = self.settings(weights=weights)
        pipe.configure(settings)
        frames = 2 * self.chunk
        times = {False: float("inf"), True: float("inf")}
        for overlap in (False, True, False, True):  # twice each, the quicker counts: warm-up and noise
            driver = ChunkDriver(pipe, settings, frames, lambda a, b: (self.video[:, :, a:b], []))
            driver.overlap = overlap
            _, seconds = self.timed(lambda: [out for _, out in driver])
            times[overlap] = min(times[overlap], seconds)
        return (f"{frames} frames, {self.args.steps} steps, {dtype}, {weights} weights: sequential {times[False]:.1f} s, "
                f"overlapped {times[True]:.1f} s ({times[False] - times[True]:+.1f} s saved)")

    # -- the table -----------------------------------------------------------------------------

    def run(self) -> str:
        rows = []
        # Most telling first; compiled rows last: they take longest to warm up.
        plain = [(dtype, False, ci, 0.0) for dtype in ("float16", "bfloat16") for ci in (1, 3)]
        plain += [("float16", False, 1, 8.0), ("bfloat16", False, 1, 8.0),
                  ("bfloat16", False, 1, 0.0, "default", True)]
        # After the overlap (measured on full-width weights), before the compiled rows.
        compiled = [("bfloat16", False, 1, 0.0, "fp8")]
        compiled += [(dtype, True, ci, 0.0) for dtype in ("float16", "bfloat16") for ci in (1, 3)]
        for spec in plain:
            rows.append(self.unet_row(*spec))
            print(f"bench_device: {rows[-1]}", file=sys.stderr)
        try:
            overlap_line = self.overlap()
        except Exception as e:
            overlap_line = f"failed: {type(e).__name__}: {e}"
        print(f"bench_device: overlap {overlap_line}", file=sys.stderr)
        for spec in compiled:
            rows.append(self.unet_row(*spec))
            print(f"bench_device: {rows[-1]}", file=sys.stderr)
        return self.table(rows, overlap_line)

    def table(self, rows: list[dict], overlap_line: str) -> str:
        dev = torch.cuda.get_device_name() if self.device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'})"
        lines = [
            f"### Device benchmark{' (CPU smoke check: tiny model, not a measurement)' if self.smoke else ''}",
            "",
            f"{datetime.date.today().isoformat()}, {dev}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
            f"Python {platform.python_version()}. Random weights, official sizes"
            f"{' (tiny here)' if self.smoke else ''}; {self.width}x{self.height} -> "
            f"{4 * self.width}x{4 * self.height}, chunk {self.chunk} + {self.lookahead} look-ahead, guidance 6. "
            f"U-Net: {self.args.steps} steps measured (after a warm-up chunk), scaled to {REAL_STEPS}; "
            "decode: float32 3d VAE; total = U-Net + decode, without overlap. Peak: "
            "torch.cuda.max_memory_allocated.",
            "",
            "| dtype | weights | offload | compile | cache_interval | max_memory GiB | U-Net s/frame (30 steps) | "
            "decode s/frame | total s/frame | warm-up chunk s | peak GiB U-Net | peak GiB decode | note |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            cells = [r["dtype"], r["weights"], "on" if r["offload"] else "off", "on" if r["compile"] else "off",
                     str(r["cache_interval"]),
                     f"{r['max_memory']:g}" if r["max_memory"] else "0 (free)"]
            if "unet" in r:
                cells += [f"{r['unet']:.3f}", f"{r['decode']:.3f}", f"{r['unet'] + r['decode']:.3f}",
                          f"{r['first']:.1f}", r["peak_unet"], r["peak_decode"]]
            else:
                cells += ["-"] * 6
            cells.append(r.get("note", ""))
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"Decode overlap (ChunkDriver, U-Net of chunk k+1 during decode of chunk k): {overlap_line}"]
        return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny model on the CPU: checks the script, measures nothing")
    ap.add_argument("--model", type=Path, help="a model folder (default: a random one built by bench/random_model.py)")
    ap.add_argument("--steps", type=int, help="U-Net steps measured (default 3; 1 with --cpu-smoke)")
    ap.add_argument("--budget", type=float, default=300.0, help="seconds after which remaining rows are skipped")
    ap.add_argument("--output", type=Path, help="also write the table here")
    args = ap.parse_args()
    args.steps = args.steps or (1 if args.cpu_smoke else 3)
    if not args.cpu_smoke and not torch.cuda.is_available():
        print(f"bench_device: no CUDA GPU here (torch {torch.__version__}, torch.cuda.is_available() is False); "
              "run on a GPU machine, or pass --cpu-smoke to check the script", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="uav-random-model-") as tmp:
        if args.model is None:
            from random_model import build

            args.model = build(Path(tmp) / "model", tiny=args.cpu_smoke, device="cpu" if args.cpu_smoke else "cuda")
        table = Bench(args).run()
    print(table)
    if args.output:
        args.output.write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
