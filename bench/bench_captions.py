"""Captioners at full size with random weights (the cost does not depend on the weights):
seconds per caption and peak memory, and the share of a whole render's time that captioning
takes. Writes a Markdown report to stdout.

    .venv/bin/python bench/bench_captions.py [--quick] > bench/last-captions.md

- Florence-2 base and large: the published architectures (DaViT vision tower, BART language
  model, 768 px input, 577 image tokens), saved by ``save_pretrained`` and loaded by vs-uav's
  own loader (:func:`vs_uav.engine.captioner.load_captioner`) in a fresh process each, so that
  each peak RSS is its own. Every caption is forced to the full 64 new tokens (the most a
  caption may have), a real frame of the shared videos as the picture.
- LLaVA-1.5-13B (CLIP ViT-L/14-336 and a Llama-2-13B): 52 GB in float32 does not fit this
  machine, so its language model is built with 2 and 4 of its 40 layers and the time per
  caption extrapolated linearly in the layers (every layer costs the same); its memory is
  counted exactly from the full model's shapes (built on the meta device).
- The share: one caption per scene against the render of that scene, 30 steps of the
  full-size U-Net with guidance at 64x64 low-res (the smallest real input; larger ones make
  the share smaller) for a scene of ``--scene-seconds`` at 24 fps.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
VIDEO = REPO.parent / "shared" / "videos" / "old_movie_1.mp4"

FLORENCE = {
    "florence-2": dict(embed_dim=(128, 256, 512, 1024), num_heads=(4, 8, 16, 32), num_groups=(4, 8, 16, 32),
                       projection_dim=768, d_model=768, layers=6, heads=12, ffn=3072),
    "florence-2-large": dict(embed_dim=(256, 512, 1024, 2048), num_heads=(8, 16, 32, 64),
                             num_groups=(8, 16, 32, 64), projection_dim=1024, d_model=1024, layers=12, heads=16,
                             ffn=4096),
}
LLAVA_LAYERS = 40


def _word_tokenizer(vocab: int, specials: list[str]):
    """A real tokenizer of the model's vocabulary size (the LM head's cost is in it)."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {t: i for i, t in enumerate(specials)}
    words.update({f"w{i}": i for i in range(len(specials), vocab)})
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>", pad_token="<pad>",
                                                extra_special_tokens={"image_token": "<image>"})


def build_florence(name: str, folder: Path) -> None:
    import torch
    import transformers

    c = FLORENCE[name]
    tokenizer = _word_tokenizer(51289, ["<s>", "<pad>", "</s>", "<unk>", "<image>"])
    images = transformers.CLIPImageProcessor(size={"height": 768, "width": 768}, do_center_crop=False)
    images.image_seq_length = 577
    transformers.Florence2Processor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    vision = transformers.Florence2VisionConfig(embed_dim=c["embed_dim"], num_heads=c["num_heads"],
                                                num_groups=c["num_groups"], projection_dim=c["projection_dim"])
    text = transformers.BartConfig(vocab_size=51289, d_model=c["d_model"], encoder_layers=c["layers"],
                                   decoder_layers=c["layers"], encoder_attention_heads=c["heads"],
                                   decoder_attention_heads=c["heads"], encoder_ffn_dim=c["ffn"],
                                   decoder_ffn_dim=c["ffn"], max_position_embeddings=1024, bos_token_id=0,
                                   pad_token_id=1, eos_token_id=2, decoder_start_token_id=2, forced_bos_token_id=0)
    config = transformers.Florence2Config(vision_config=vision, text_config=text, image_token_id=4)
    torch.manual_seed(0)
    transformers.Florence2ForConditionalGeneration(config).save_pretrained(folder)


def llava_config(layers: int):
    import transformers

    vision = transformers.CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                           num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)
    text = transformers.LlamaConfig(vocab_size=32064, hidden_size=5120, intermediate_size=13824,
                                    num_hidden_layers=layers, num_attention_heads=40, num_key_value_heads=40,
                                    max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_index=32000,
                                    vision_feature_layer=-2, vision_feature_select_strategy="default")


def build_llava(layers: int, folder: Path) -> None:
    import torch
    import transformers

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    tokenizer = _word_tokenizer(32064, specials)
    tokenizer.add_special_tokens({"additional_special_tokens": []})
    images = transformers.CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    # The image token is id 32000 in LLaVA-1.5's vocabulary: the word tokenizer's w32000 plays it.
    tokenizer.image_token, tokenizer.image_token_id = "w32000", 32000
    processor = transformers.LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=14,
                                            vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                            image_token="w32000")
    processor.save_pretrained(folder)
    torch.manual_seed(0)
    transformers.LlavaForConditionalGeneration(llava_config(layers)).to(torch.bfloat16).save_pretrained(folder)


def _measure(name: str, folder: Path, repeats: int) -> dict:
    """In this process: load, caption ``repeats`` times (after a warm-up), peak RSS."""
    import numpy as np
    import torch
    import vapoursynth as vs

    from vs_uav.engine import captioner as c
    from vs_uav.media.captions import picture_of, rgb24

    torch.set_num_threads(max(1, torch.get_num_threads()))
    for generation in (c.FLORENCE_GENERATION, c.LLAVA_GENERATION):
        generation["min_new_tokens"] = generation["max_new_tokens"]  # every caption as long as it may be
    if name == "llava-1.5" and "w32000" not in c.LLAVA_PROMPT:
        c.LLAVA_PROMPT = c.LLAVA_PROMPT.replace("<image>", "w32000")
    picture = picture_of(rgb24(vs.core.bs.VideoSource(str(VIDEO))), 10)
    started = time.perf_counter()
    model = c.load_captioner(name, folder, "cpu")
    load = time.perf_counter() - started
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        model.caption(picture)
        times.append(time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"load": load, "first": times[0], "caption": statistics.median(times[1:]), "rss": rss,
            "params": sum(p.numel() for p in model.model.parameters()), "picture": list(np.shape(picture))}


def measure(name: str, folder: Path, repeats: int) -> dict:
    run = subprocess.run([sys.executable, __file__, "--measure", name, str(folder), str(repeats)],
                         capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(run.stderr[-3000:])
    return json.loads(run.stdout.strip().splitlines()[-1])


def llava_bytes() -> int:
    import torch
    import transformers

    with torch.device("meta"):
        model = transformers.LlavaForConditionalGeneration(llava_config(LLAVA_LAYERS))
    return sum(p.numel() for p in model.parameters())


def unet_seconds_per_frame_step(quick: bool) -> float:
    """The full-size U-Net at 64x64 with guidance (bench_pipeline's measure), float32 here."""
    from bench_pipeline import unet_speed

    return unet_speed(64, "cpu", "float32", 1 if quick else 2)


def picture_choice() -> list[tuple[str, float, float, int, float, float]]:
    """Each shared video, and the same faded in over its first 10 frames, as one scene: the
    first frame's (the official picture's) mean luma and sharpness against the chosen one's."""
    import vapoursynth as vs

    from vs_uav.media.captions import candidates, pick_frame, picture_of, rgb24, sharpness

    rows = []
    with tempfile.TemporaryDirectory(prefix="uav-bench-fade-") as tmp:
        for video in sorted(VIDEO.parent.glob("*.mp4")):
            for fade in (False, True):
                path = video
                if fade:
                    path = Path(tmp) / f"{video.stem}-fade.mkv"
                    subprocess.run(["ffmpeg", "-v", "error", "-i", str(video), "-vf", "fade=in:0:10", "-c:v", "ffv1",
                                    str(path)], check=True)
                rgb = rgb24(vs.core.bs.VideoSource(str(path)))
                pictures = {n: picture_of(rgb, n) for n in {0, *candidates(0, rgb.num_frames)}}
                chosen = pick_frame({n: pictures[n] for n in candidates(0, rgb.num_frames)})
                rows.append((f"{video.name}{' faded in' if fade else ''}", float(pictures[0].mean()),
                             sharpness(pictures[0]), chosen, float(pictures[chosen].mean()),
                             sharpness(pictures[chosen])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--scene-seconds", type=float, default=4.0)
    parser.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        name, folder, repeats = args.measure
        print(json.dumps(_measure(name, Path(folder), int(repeats))))
        return
    repeats = 1 if args.quick else 3
    rows = []
    with tempfile.TemporaryDirectory(prefix="uav-bench-captions-") as tmp:
        for name in ("florence-2",) if args.quick else tuple(FLORENCE):
            folder = Path(tmp) / name
            build_florence(name, folder)
            rows.append((name, measure(name, folder, repeats)))
            shutil.rmtree(folder)
        llava = {}
        for layers in (2, 4):
            folder = Path(tmp) / f"llava-{layers}"
            build_llava(layers, folder)
            llava[layers] = measure("llava-1.5", folder, 1)
            shutil.rmtree(folder)
    per_layer = (llava[4]["caption"] - llava[2]["caption"]) / 2
    llava_full = llava[2]["caption"] + per_layer * (LLAVA_LAYERS - 2)
    unet = unet_seconds_per_frame_step(args.quick)
    render = unet * 30 * args.scene_seconds * 24
    report(rows, llava, llava_full, llava_bytes(), unet, render, args.scene_seconds)
    print("\nThe picture of a scene (each video one scene; faded in: ffmpeg's fade=in:0:10):\n")
    print("| scene | first frame: mean luma, sharpness | chosen frame | its mean luma, sharpness |")
    print("|---|---|---|---|")
    for name, mean0, sharp0, chosen, mean, sharp in picture_choice():
        print(f"| {name} | {mean0:.0f}, {sharp0:.0f} | {chosen} | {mean:.0f}, {sharp:.0f} |")


def report(rows, llava, llava_full, llava_params, unet, render, scene_seconds) -> None:
    import torch
    import transformers

    print(f"## Captioners (`bench/bench_captions.py`), {time.strftime('%Y-%m-%d')}, "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, no GPU\n")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}; float32 on the CPU; every caption "
          "64 new tokens; the picture a 480x352 frame of old_movie_1.mp4.\n")
    print("| captioner | parameters | load s | first caption s | s per caption | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['params'] / 1e9:.2f} B | {r['load']:.1f} | {r['first']:.1f} | {r['caption']:.1f} | "
              f"{r['rss']:.0f} |")
    for layers, r in llava.items():
        print(f"| llava-1.5, {layers} of 40 LM layers (bf16 file) | {r['params'] / 1e9:.2f} B | {r['load']:.1f} | "
              f"{r['first']:.1f} | {r['caption']:.1f} | {r['rss']:.0f} |")
    print(f"| llava-1.5 (13 B), extrapolated | {llava_params / 1e9:.2f} B | - | - | {llava_full:.0f} | "
          f"{llava_params * 4 / 2**20:.0f} (weights, float32) |")
    print(f"\nLLaVA-1.5-13B's weights: {llava_params * 2 / 2**30:.1f} GiB in float16, "
          f"{llava_params / 2**30:.1f} GiB in 8 bits, {llava_params / 2 / 2**30:.1f} GiB in 4 bits.\n")
    print(f"Full-size U-Net, 64x64 low-res, guidance: {unet:.2f} s per frame per step; a {scene_seconds:g} s scene "
          f"(24 fps) at 30 steps: {render:.0f} s.\n")
    print("| captioner | share of the scene's render time |")
    print("|---|---|")
    for name, r in rows:
        print(f"| {name} | {100 * r['caption'] / (r['caption'] + render):.3f} % |")
    print(f"| llava-1.5 (extrapolated) | {100 * llava_full / (llava_full + render):.3f} % |")


if __name__ == "__main__":
    main()
