"""Prompt encoding: the x4 upscaler's CLIP text model (transformers) and tokenizer.

Rows are laid out as the official pipeline lays them out for classifier-free
guidance: ``[negative, positive]``; without guidance only the positive prompt is encoded.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..loading import ModelLoadError, load_weights

logger = logging.getLogger(__name__)

# Official inference: the caption is followed by this suffix (plain concatenation).
PROMPT_SUFFIX = "best quality, extremely detailed"
NEGATIVE_PROMPT = "blur, worst quality"
# Buffers that old transformers versions saved and newer ones recompute.
_OBSOLETE_KEYS = ("text_model.embeddings.position_ids",)


class PromptEncoder:
    """Tokenizer plus CLIP text model; ``encode`` returns (rows, 77, hidden) embeddings."""

    def __init__(self, tokenizer, text_model: torch.nn.Module):
        self.tokenizer = tokenizer
        self.text_model = text_model

    @classmethod
    def from_folder(cls, tokenizer_dir: Path, config_path: Path, weights_path: Path) -> "PromptEncoder":
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

        try:
            tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
        except Exception as e:
            raise ModelLoadError(f"{tokenizer_dir}: cannot load the CLIP tokenizer ({e})") from None
        try:
            config = CLIPTextConfig.from_json_file(str(config_path))
        except Exception as e:
            raise ModelLoadError(f"{config_path}: not a CLIP text config ({e})") from None
        model = CLIPTextModel(config)
        # transformers 5 dropped the "text_model." prefix that older checkpoints carry.
        prefix = "text_model."
        flat = not any(k.startswith(prefix) for k in model.state_dict())
        rename = (lambda k: k.removeprefix(prefix)) if flat else None
        ignore = [rename(k) if rename else k for k in _OBSOLETE_KEYS]
        load_weights(model, weights_path, config=str(config_path), ignore=ignore, rename=rename)
        return cls(tokenizer, model.eval())

    @property
    def device(self) -> torch.device:
        return next(self.text_model.parameters()).device

    def _embed(self, texts: list[str]) -> torch.Tensor:
        max_len = self.tokenizer.model_max_length
        ids = self.tokenizer(texts, padding="max_length", max_length=max_len, truncation=True,
                             return_tensors="pt").input_ids
        full = self.tokenizer(texts, padding="longest", return_tensors="pt").input_ids
        if full.shape[-1] > ids.shape[-1]:
            logger.warning("prompt truncated to %d CLIP tokens: %r", max_len, texts)
        # The official pipeline passes no attention mask: padding tokens are attended to.
        return self.text_model(ids.to(self.device))[0]

    @torch.no_grad()
    def encode(self, prompt: str, negative_prompt: str = NEGATIVE_PROMPT, guidance: bool = True) -> torch.Tensor:
        if guidance:
            return self._embed([negative_prompt, prompt])
        return self._embed([prompt])


def full_prompt(caption: str) -> str:
    """The official prompt: the caption followed by the quality suffix."""
    return caption + PROMPT_SUFFIX
