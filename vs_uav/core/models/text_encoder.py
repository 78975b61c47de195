"""Prompt encoding: the x4 upscaler's CLIP text model (transformers) and tokenizer.

Rows are laid out as the official pipeline lays them out for classifier-free
guidance: ``[negative, positive]``; without guidance only the positive prompt is encoded.
The prompt text itself (caption, quality suffix, negative prompt) is
:class:`vs_uav.settings.UpscaleSettings`'s. Reading the weights is the caller's (see
:meth:`vs_uav.engine.pipeline.UpscalePipeline.from_pretrained`); :func:`checkpoint_keys` says how
the official checkpoint's keys map onto the model built here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

import torch

from vs_uav.errors import one_line

if TYPE_CHECKING:
    from transformers import CLIPTextConfig

logger = logging.getLogger(__name__)

# The official checkpoint's keys carry this prefix; transformers 5 dropped it from the model.
CHECKPOINT_PREFIX = "text_model."
# Buffers that old transformers versions saved and newer ones recompute.
OBSOLETE_KEYS = ("text_model.embeddings.position_ids",)


def checkpoint_keys(model: torch.nn.Module) -> tuple[Optional[Callable[[str], str]], tuple[str, ...]]:
    """How official checkpoint keys map onto ``model``'s: ``(rename, ignore)``.

    ``rename`` maps a file key to the model's key (None when they agree); ``ignore`` lists
    the obsolete keys a file may hold, as renamed.
    """
    if any(k.startswith(CHECKPOINT_PREFIX) for k in model.state_dict()):
        return None, OBSOLETE_KEYS

    def rename(key: str) -> str:
        return key.removeprefix(CHECKPOINT_PREFIX)

    return rename, tuple(rename(k) for k in OBSOLETE_KEYS)


def clip_text_config(data: Mapping[str, Any]) -> "CLIPTextConfig":
    """transformers' CLIP text config from the dict of a ``text_encoder/config.json``."""
    from transformers import CLIPTextConfig

    try:
        return CLIPTextConfig.from_dict(dict(data))
    except Exception as e:  # transformers raises a zoo of types for bad values
        raise ValueError(f"not a CLIP text config ({one_line(e)})") from None


class PromptEncoder:
    """Tokenizer plus CLIP text model; ``encode`` returns (rows, 77, hidden) embeddings."""

    def __init__(self, tokenizer, text_model: torch.nn.Module):
        self.tokenizer = tokenizer
        self.text_model = text_model
        self._fitted: dict[tuple[str, str], tuple[str, int]] = {}  # (caption, suffix) -> fit()
        self._warned: set[tuple[str, int, str]] = set()

    @classmethod
    def from_config(cls, tokenizer_dir: Path, config: "CLIPTextConfig") -> "PromptEncoder":
        """The CLIP tokenizer in ``tokenizer_dir`` and a CLIP text model of ``config`` (see
        :func:`clip_text_config`), with untrained weights for the caller to load.

        Raises ValueError, one line naming the tokenizer folder, when the tokenizer cannot load.
        """
        from transformers import CLIPTextModel, CLIPTokenizer

        try:
            tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
        except Exception as e:  # transformers raises OSError, ValueError, KeyError... for a bad folder
            raise ValueError(f"{tokenizer_dir}: cannot load the CLIP tokenizer ({one_line(e)})") from None
        return cls(tokenizer, CLIPTextModel(config).eval())

    @property
    def device(self) -> torch.device:
        return next(self.text_model.parameters()).device

    def _count(self, text: str) -> int:
        """CLIP tokens of ``text``, without the start and end tokens, never truncated."""
        return len(self.tokenizer(text, add_special_tokens=False, verbose=False).input_ids)

    def fit(self, caption: str, suffix: str, join: Callable[[str, str], str]) -> tuple[str, int]:
        """The prompt ``join(caption, suffix)`` (the settings model's one joining rule, passed in:
        model code does not import the front end) cut to what the text model reads, and how
        many tokens were dropped.

        The tokenizer alone would cut the end, i.e. the quality suffix; here the caption's
        last tokens go instead, as many as needed for the suffix to fit whole, cut after a
        whole word when the kept part has one. CLIP's tokenization ignores case and
        whitespace between its word pieces, so the kept tokens' text encodes to those same
        tokens.
        """
        key = (caption, suffix)
        if key in self._fitted:
            return self._fitted[key]
        room = self.tokenizer.model_max_length - 2  # the start and end tokens
        full = join(caption, suffix)
        total = self._count(full)
        fitted = full
        if total > room:
            ids = self.tokenizer(caption, add_special_tokens=False, verbose=False).input_ids

            def prompt(k: int) -> str:
                return join(self.tokenizer.decode(ids[:k], clean_up_tokenization_spaces=False).strip(), suffix)

            lo, hi = 0, len(ids)  # the most caption tokens that fit: prompt(lo) fits or lo == 0
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self._count(prompt(mid)) <= room:
                    lo = mid
                else:
                    hi = mid - 1
            # Whole words where the caption has any: a word's last piece ends with "</w>".
            ends = [k for k in range(lo, 0, -1) if self.tokenizer.convert_ids_to_tokens(ids[k - 1]).endswith("</w>")]
            fitted = prompt(ends[0] if ends else lo)
        self._fitted[key] = fitted, max(0, total - min(self._count(fitted), room))
        return self._fitted[key]

    def _embed(self, texts: list[str]) -> torch.Tensor:
        max_len = self.tokenizer.model_max_length
        ids = self.tokenizer(texts, padding="max_length", max_length=max_len, truncation=True,
                             return_tensors="pt").input_ids
        # The official pipeline passes no attention mask: padding tokens are attended to.
        return self.text_model(ids.to(self.device))[0]

    def _warn_once(self, what: str, dropped: int, how: str) -> None:
        if dropped and (what, dropped, how) not in self._warned:
            self._warned.add((what, dropped, how))
            logger.warning("%s: %d CLIP token%s beyond the text model's %d dropped %s", what, dropped,
                           "s" if dropped > 1 else "", self.tokenizer.model_max_length, how)

    @torch.no_grad()
    def encode(self, prompt: str, negative_prompt: str, guidance: bool = True, suffix: str = "",
               join: Optional[Callable[[str, str], str]] = None) -> torch.Tensor:
        """Embeddings of ``[negative_prompt, prompt]`` with guidance, else of ``[prompt]``.

        With ``suffix``, ``prompt`` is the caption and the text encoded is :meth:`fit`'s: a
        prompt too long for the model loses the end of its caption, not the suffix. Text
        dropped is said once per prompt, in one short warning.
        """
        if suffix:
            if join is None:
                raise ValueError("encode(suffix=...) needs join=, the rule joining caption and suffix")
            prompt, dropped = self.fit(prompt, suffix, join)
            self._warn_once("prompt", dropped, "from the end of the caption; the quality suffix is kept")
        else:
            dropped = max(0, self._count(prompt) - (self.tokenizer.model_max_length - 2))
            self._warn_once("prompt", dropped, "from its end")
        if guidance:
            dropped = max(0, self._count(negative_prompt) - (self.tokenizer.model_max_length - 2))
            self._warn_once("negative_prompt", dropped, "from its end")
            return self._embed([negative_prompt, prompt])
        return self._embed([prompt])
