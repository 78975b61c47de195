"""Loading the full-size model: time and peak memory of ``UpscalePipeline.from_pretrained`` (not a
test: timings on shared machines are noisy, so compare figures taken within one run). Writes a
Markdown report to stdout.

    .venv/bin/python bench/bench_loading.py [--rounds 2] [--formats safetensors,bin] [--tiny] > bench/last-run.md

The model folder has the official layout and sizes with random weights (``bench/random_model.py``,
the text encoder at its official 23 layers), written once into a temporary folder; ``bin`` is the
same weights re-saved as the official release's ``.bin`` files. Two ways of loading it:

- now: ``UpscalePipeline.from_pretrained`` (modules built on the meta device, the file's tensors
  assigned to them);
- before: the same folder, checks and pipeline, but the modules constructed normally (random
  initialisation) and the weights copied in with ``load_state_dict``, as ``from_pretrained`` did
  until 2026-12-02 (reproduced here, :func:`old_from_pretrained`).

Each measurement runs in a fresh interpreter so that each peak is its own (VmHWM: unlike
getrusage's ru_maxrss it does not inherit the parent's peak across fork and exec), with torch and
transformers imported before the clock starts. On the CPU loaded weights may stay memory-mapped
and untouched until first used, so after loading every weight is read once (a float64 sum, also
the check that both ways loaded the same numbers) and the peak is taken after that.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_pipeline import in_subprocess, peak_rss_kib  # noqa: E402

OFFICIAL_TEXT_LAYERS = 23  # the x4 upscaler's text encoder (bench/full_size/text_encoder/config.json)


def write_folders(root: str, formats: list[str], tiny: bool = False) -> dict:
    """The random full-size folder (safetensors) and, if asked, its ``.bin`` copy; seconds taken."""
    import random_model
    import torch

    from vs_uav.weights.folder import LAYOUT, read_state_dict

    t0 = time.perf_counter()
    st = random_model.build(Path(root) / "safetensors", tiny=tiny, text_layers=1 if tiny else OFFICIAL_TEXT_LAYERS)
    out = {"safetensors": str(st), "write_s": time.perf_counter() - t0}
    if "bin" in formats:
        t0 = time.perf_counter()
        shutil.copytree(st, Path(root) / "bin", ignore=shutil.ignore_patterns("*.safetensors"))
        for name in ("unet", "vae_3d", "text_encoder"):
            safetensors, official = (LAYOUT[name].weights[0], LAYOUT[name].weights[-1])
            torch.save(dict(read_state_dict(st / safetensors)), Path(root) / "bin" / official)
        out["bin"], out["bin_s"] = str(Path(root) / "bin"), time.perf_counter() - t0
    return out


def _old_component(folder: Path, name: str):
    """One component the old way: constructed normally, checked, then copied into."""
    from vs_uav.core.models.text_encoder import PromptEncoder, checkpoint_keys, clip_text_config
    from vs_uav.core.models.unet_video import UNetVideoConfig, UNetVideoModel
    from vs_uav.core.models.vae_video import AutoencoderKLVideo, VAEVideoConfig
    from vs_uav.weights.folder import LAYOUT, TOKENIZER_DIR, check_state_dict, find_weights, read_config, \
        read_state_dict

    rename, ignore = None, ()
    if name == "unet":
        owner = module = UNetVideoModel(read_config(folder, name, UNetVideoConfig.from_dict))
    elif name.startswith("vae_"):
        owner = module = AutoencoderKLVideo(read_config(folder, name, VAEVideoConfig.from_dict))
    else:
        owner = PromptEncoder.from_config(folder / TOKENIZER_DIR, read_config(folder, name, clip_text_config))
        module = owner.text_model
        rename, ignore = checkpoint_keys(module)
    path = find_weights(folder, name)
    sd = read_state_dict(path)
    if rename is not None:
        sd = {rename(k): v for k, v in sd.items()}
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    check_state_dict(expected, {k: v.shape for k, v in sd.items()}, path, LAYOUT[name].config, ignore)
    module.load_state_dict({k: v for k, v in sd.items() if k not in set(ignore)}, strict=True)
    return owner


def old_from_pretrained(model_dir: str):
    """``UpscalePipeline.from_pretrained(model_dir)`` (CPU, float32, vae 3d) as it loaded before."""
    import torch

    from vs_uav.core.scheduling import DDIMScheduler, LowResScheduler, SchedulerConfig
    from vs_uav.engine.pipeline import UpscaleAVideoModel, UpscalePipeline
    from vs_uav.weights.folder import check_folder, max_noise_level, read_config

    folder = check_folder(model_dir, "3d")
    unet, vae, prompt = (_old_component(folder, n) for n in ("unet", "vae_3d", "text_encoder"))
    scheduler = DDIMScheduler(read_config(folder, "scheduler", SchedulerConfig.from_dict))
    low_res = LowResScheduler(read_config(folder, "low_res_scheduler", SchedulerConfig.from_dict))
    for module in (unet, prompt.text_model, vae):
        module.to(device="cpu", dtype=torch.float32).eval().requires_grad_(False)
    model = UpscaleAVideoModel(folder, unet, vae, prompt, scheduler, low_res, max_noise_level(folder), "3d")
    return UpscalePipeline(model, "cpu", torch.float32, "dis")


def measure(model_dir: str, way: str) -> dict:
    """One load in this (fresh) interpreter: seconds, seconds to read every weight once, peaks."""
    import torch
    from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401  (imports off the clock)

    from vs_uav.engine.pipeline import UpscalePipeline

    base_kib = peak_rss_kib()
    t0 = time.perf_counter()
    if way == "now":
        pipe = UpscalePipeline.from_pretrained(model_dir, flow="dis")
    else:
        pipe = old_from_pretrained(model_dir)
    loaded = time.perf_counter() - t0
    loaded_kib = peak_rss_kib()
    m = pipe.model
    checksum = 0.0
    with torch.no_grad():
        for module in (m.unet, m.vae, m.prompt_encoder.text_model):
            for t in module.state_dict().values():
                checksum += float(t.sum(dtype=torch.float64))
    touched = time.perf_counter() - t0
    return {"load_s": loaded, "touched_s": touched, "base_mib": base_kib / 1024, "load_peak_mib": loaded_kib / 1024,
            "peak_mib": peak_rss_kib() / 1024, "checksum": checksum,
            "parameters": sum(p.numel() for mod in (m.unet, m.vae, m.prompt_encoder.text_model)
                              for p in mod.parameters())}


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per format; the fastest is kept")
    ap.add_argument("--formats", default="safetensors,bin", help="comma-separated: safetensors, bin")
    ap.add_argument("--tiny", action="store_true", help="the tiny model's sizes (a quick smoke check)")
    ap.add_argument("--dir", type=Path, help="where to write the model folders (default: a temporary folder)")
    args = ap.parse_args()
    formats = [f for f in args.formats.split(",") if f]

    print(f"# Loading benchmark\n\n- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"- machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"{platform.processor() or 'cpu'}; CUDA: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    print(f"- torch {torch.__version__}, command: `{' '.join([Path(sys.executable).name] + sys.argv)}`\n")
    root = Path(tempfile.mkdtemp(prefix="uav-bench-loading-", dir=args.dir))
    try:
        folders = in_subprocess("bench_loading", "write_folders", root=str(root), formats=formats,
                                tiny=args.tiny)
        print(f"Random {'tiny' if args.tiny else 'full-size'} folder written in {folders['write_s']:.0f} s"
              + (f", its .bin copy in {folders['bin_s']:.0f} s" if "bin" in folders else "") + ".\n")
        print("| format | way | load (s) | load + reading every weight (s) | peak RSS after load (MiB) | "
              "peak RSS after reading (MiB) | RSS before loading (MiB) |\n|---|---|---|---|---|---|---|")
        summary = []
        for fmt in formats:
            runs: dict[str, list[dict]] = {"before": [], "now": []}
            for _ in range(args.rounds):
                for way in ("before", "now"):
                    runs[way].append(in_subprocess("bench_loading", "measure", model_dir=folders[fmt], way=way))
            best = {way: min(rs, key=lambda r: r["load_s"]) for way, rs in runs.items()}
            for way, r in best.items():
                print(f"| {fmt} | {way} | {r['load_s']:.1f} | {r['touched_s']:.1f} | {r['load_peak_mib']:.0f} | "
                      f"{r['peak_mib']:.0f} | {r['base_mib']:.0f} |")
            same = len({r["checksum"] for rs in runs.values() for r in rs}) == 1
            b, n = best["before"], best["now"]
            grown = {way: r["peak_mib"] - r["base_mib"] for way, r in best.items()}
            summary.append(f"- {fmt}: load **{b['load_s'] / n['load_s']:.1f}x** faster "
                           f"({b['touched_s'] / n['touched_s']:.1f}x with every weight read once); peak RSS "
                           f"**{grown['now']:.0f} MiB** over the imports, was {grown['before']:.0f} MiB "
                           f"({grown['now'] / grown['before']:.2f}x); same weights both ways: {'yes' if same else 'NO'} "
                           f"({n['parameters'] / 1e6:.0f} M parameters)")
        print("\n" + "\n".join(summary))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
