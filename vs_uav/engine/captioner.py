"""Captioners: one picture in, one line of text out, for the prompt of a scene.

Upscale-A-Video is text-guided; the official inference captions the first frame of each
video with LLaVA-1.5-13B (resized to 512 pixels on its short side, the question
:data:`LLAVA_QUESTION` in the vicuna_v1 conversation, temperature 0.2, top_p 0.7, at most 64
new tokens) and uses the caption before the quality suffix. :class:`Llava15` does that with
transformers' native Llava classes; :class:`Florence2` is the small default. Both load from a
Hugging Face layout folder (:mod:`vs_uav.weights.captioners` checks it) and are
deterministic: Florence-2 decodes by beam search, LLaVA samples as the official code does
but from a fixed seed, so the same picture and captioner give the same caption.

Pictures are ``(H, W, 3)`` uint8 RGB arrays; no VapourSynth here.
"""

from __future__ import annotations

import gc
import logging
import re
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from vs_uav.weights.captioners import CaptionerSpec, check_captioner_folder, check_captioner_name
from vs_uav.weights.folder import ModelLoadError

logger = logging.getLogger(__name__)

# The official LLaVA agent's question, conversation (vicuna_v1: system, "USER: ", " ASSISTANT:")
# and generation settings.
LLAVA_QUESTION = "Describe this image and its style in a very detailed manner."
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
LLAVA_PROMPT = f"{VICUNA_SYSTEM} USER: <image>\n{LLAVA_QUESTION} ASSISTANT:"
LLAVA_SHORT_SIDE = 512
LLAVA_GENERATION = {"do_sample": True, "temperature": 0.2, "top_p": 0.7, "num_beams": 1, "max_new_tokens": 64}
# Florence-2's detailed caption: one or two sentences naming what is in the picture.
FLORENCE_TASK = "<DETAILED_CAPTION>"
FLORENCE_GENERATION = {"do_sample": False, "num_beams": 3, "max_new_tokens": 64}
SEED = 0  # LLaVA's sampling draws from this seed for every picture

# Openings that say nothing about the picture ("The image shows ...").
_OPENINGS = re.compile(r"^(?:in\s+)?(?:this|the)\s+(?:image|picture|photo(?:graph)?|scene|frame|video)\s+"
                       r"(?:shows|depicts|features|displays|captures|presents|contains|is of|is)\s+", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ufffd]")


def clean_caption(text: str) -> str:
    """One line: control characters and tabs gone, spaces collapsed, no "The image shows",
    first letter kept as written, no trailing full stop (the quality suffix follows)."""
    text = " ".join(_CONTROL.sub(" ", text).split())
    text = _OPENINGS.sub("", text)
    text = text.strip(" .,;:")
    return text[:1].upper() + text[1:] if text else ""


class Captioner:
    """The interface: :meth:`caption` a picture; :meth:`close` frees the model (and the GPU's
    cached blocks) before the diffusion model loads."""

    def __init__(self, spec: CaptionerSpec, folder: Path, device: torch.device, dtype: torch.dtype,
                 quantize: str = "none"):
        import transformers

        self.spec, self.folder, self.device, self.dtype = spec, folder, device, dtype
        transformers.utils.logging.disable_progress_bar()  # bars on stderr are the CLI's to draw
        try:
            self.processor = transformers.AutoProcessor.from_pretrained(folder)
            self.model = self._model_class().from_pretrained(folder, dtype=dtype, **quantization_args(quantize, device))
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise ModelLoadError(f"{folder}: captioner {self.spec.name!r} cannot be loaded "
                                 f"({type(e).__name__}: {' '.join(str(e).split())[:300]})") from None
        if quantize == "none":
            self.model.to(device)
        self.model.eval().requires_grad_(False)

    def _model_class(self):
        raise NotImplementedError

    def caption(self, picture: np.ndarray) -> str:
        if picture.ndim != 3 or picture.shape[2] != 3 or picture.dtype != np.uint8:
            raise ValueError(f"picture of shape {picture.shape} {picture.dtype}; accepted: (H, W, 3) uint8 RGB")
        with torch.inference_mode():
            return clean_caption(self._generate(picture))

    def _generate(self, picture: np.ndarray) -> str:
        raise NotImplementedError

    def close(self) -> None:
        del self.model
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


class Florence2(Captioner):
    """Florence-2 (base or large): the detailed-caption task, beam search."""

    def _model_class(self):
        import transformers

        return transformers.Florence2ForConditionalGeneration

    def _generate(self, picture: np.ndarray) -> str:
        from PIL import Image

        inputs = self.processor(images=Image.fromarray(picture), text=FLORENCE_TASK, return_tensors="pt")
        inputs = {k: v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device)
                  for k, v in inputs.items()}
        out = self.model.generate(**inputs, **FLORENCE_GENERATION)
        return self.processor.batch_decode(out, skip_special_tokens=True)[0]


class Llava15(Captioner):
    """LLaVA-1.5 as the official inference asks it (:data:`LLAVA_PROMPT`, :data:`LLAVA_GENERATION`)."""

    def _model_class(self):
        import transformers

        return transformers.LlavaForConditionalGeneration

    def _generate(self, picture: np.ndarray) -> str:
        from PIL import Image

        inputs = self.processor(images=Image.fromarray(official_resize(picture)), text=LLAVA_PROMPT,
                                return_tensors="pt")
        inputs = {k: v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device)
                  for k, v in inputs.items()}
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(SEED)
            out = self.model.generate(**inputs, **LLAVA_GENERATION)
        text = self.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
        return text.strip().removesuffix("</s>")


def official_resize(picture: np.ndarray) -> np.ndarray:
    """The official resize before LLaVA's processor: bicubic to 512 pixels on the short side,
    clipped to 0..255 and truncated to uint8, as ``F.interpolate`` then ``astype`` does."""
    h, w = picture.shape[:2]
    scale = LLAVA_SHORT_SIDE / min(h, w)
    size = (round(h * scale), round(w * scale))
    x = torch.from_numpy(np.ascontiguousarray(picture)).permute(2, 0, 1)[None].float()
    x = torch.nn.functional.interpolate(x, size=size, mode="bicubic")
    return x[0].permute(1, 2, 0).numpy().clip(0, 255).astype(np.uint8)


_BACKENDS: dict[str, type[Captioner]] = {"florence2": Florence2, "llava": Llava15}
QUANTIZE = ("none", "8bit", "4bit")


def quantization_args(quantize: str, device: torch.device) -> dict:
    """from_pretrained's arguments for 8- or 4-bit weights (bitsandbytes, CUDA only), as the
    official ``--load_8bit_llava``."""
    if quantize == "none":
        return {}
    if quantize not in QUANTIZE:
        raise ValueError(f"--captioner-bits {quantize!r}; accepted: {', '.join(QUANTIZE)}")
    if device.type != "cuda":
        raise ValueError(f"--captioner-bits {quantize}: accepted on a CUDA device only (bitsandbytes), "
                         f"not on {device}")
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise ValueError(f"--captioner-bits {quantize}: needs bitsandbytes (pip install 'vs-uav[quantize]')") from None
    config = BitsAndBytesConfig(load_in_8bit=True) if quantize == "8bit" else \
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float16)
    return {"quantization_config": config, "device_map": {"": device.index or 0}}


def captioner_device(device: str) -> torch.device:
    """Where the captioner runs: the second GPU when there is one (as the official uses
    ``cuda:1``) and the render's device is 'auto'; else the render's device."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda:1" if torch.cuda.device_count() > 1 else "cuda:0")
        return torch.device("cpu")
    return torch.device(device)


_BITS = {"none": 0, "8bit": 8, "4bit": 4}


def weight_bytes(folder: Path, dtype: torch.dtype, quantize: str = "none") -> int:
    """What the captioner's weights take in memory: its parameters (from the files' headers)
    at ``dtype``'s size, or at 8 or 4 bits each."""
    from vs_uav.weights.captioners import weight_files
    from vs_uav.weights.folder import tensor_shapes

    count = sum(int(np.prod(shape)) for path in weight_files(Path(folder)) for shape in tensor_shapes(path).values())
    bits = _BITS.get(quantize) or torch.finfo(dtype).bits
    return count * bits // 8


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_budget(name: str, folder: Path, dtype: torch.dtype, quantize: str, max_memory: float) -> None:
    """ValueError when ``max_memory`` (GiB; 0: no budget) cannot hold the captioner's weights,
    naming what it needs and what would fit."""
    if not max_memory:
        return
    need = weight_bytes(folder, dtype, quantize) * 1.15  # activations and the generation's cache
    if need <= max_memory * 2**30:
        return
    smaller = [f"--captioner-bits {q} ({_size(weight_bytes(folder, dtype, q) * 1.15)})"
               for q in ("8bit", "4bit") if _BITS[q] < (_BITS[quantize] or 16)]
    raise ValueError(f"--max-memory {max_memory:g}: captioner {name!r} needs {_size(need)} "
                     f"({'float' if quantize == 'none' else quantize} weights); accepted: a budget that holds it, "
                     f"{' or '.join(smaller + ['a smaller captioner (florence-2)'])}")


def load_captioner(name: str, folder: Path, device: str = "auto", quantize: str = "none",
                   max_memory: float = 0.0) -> Captioner:
    """Captioner ``name`` from ``folder`` (checked first, one line naming what is missing), in
    float16 on CUDA and float32 on the CPU, refused when ``max_memory`` (GiB) cannot hold it."""
    spec = check_captioner_name(name)
    check_captioner_folder(folder, spec)
    where = captioner_device(device)
    dtype = torch.float16 if where.type == "cuda" else torch.float32
    check_budget(name, Path(folder), dtype, quantize, max_memory)
    captioner = _BACKENDS[spec.model_type](spec, Path(folder), where, dtype, quantize)
    logger.info("captioner %s loaded from %s on %s", name, folder, where)
    return captioner


def captioner_identity(name: str, folder: Path) -> Optional[str]:
    """What names a captioner's weights in the caption cache: its name and the size and time
    of its weight files (a re-downloaded or replaced model captions anew)."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    return name + "".join(f"|{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in files)
