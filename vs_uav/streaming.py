"""What crosses a chunk boundary, so long clips stream through bounded memory.

A clip is denoised chunk by chunk, each chunk in lockstep over all diffusion steps.
At every step the U-Net windows that straddle the boundary see the previous chunk's
latents of that step as fixed context, and the forward propagation sweep continues
from the previous chunk's propagated state. :class:`ChunkState` is that hand-over:
small, explicit, and serialisable (safetensors) so a render can be resumed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

STATE_VERSION = 1


@dataclass
class ChunkState:
    """The tail of a finished chunk, as the next chunk needs it.

    All tensors are float32 on the CPU, at the padded low resolution (H, W).
    """

    end: int  # index of the first frame after the chunk
    latents: torch.Tensor  # (S, 1, C, L, H, W): the last L frames' latents entering each step
    image: torch.Tensor  # (1, 3, L, H, W): their noise-augmented low-res frames (U-Net input)
    last_frame: torch.Tensor  # (1, 3, H, W): the clean low-res last frame, for the boundary flow
    propagated: dict[int, torch.Tensor]  # step -> (1, C, H, W) forward-sweep x0 of the last frame
    fingerprint: str = ""  # what produced it (parameters, model); checked before use

    @property
    def context(self) -> int:
        return self.latents.shape[3]

    def save(self, path: Union[str, Path]) -> None:
        """Write atomically: a state file is either complete or absent."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {"latents": self.latents, "image": self.image, "last_frame": self.last_frame}
        tensors.update({f"propagated.{k}": v for k, v in self.propagated.items()})
        meta = {"version": str(STATE_VERSION), "end": str(self.end), "fingerprint": self.fingerprint}
        tmp = path.with_name(path.name + ".tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Union[str, Path], fingerprint: Optional[str] = None) -> "ChunkState":
        from safetensors import safe_open

        path = Path(path)
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("version") != str(STATE_VERSION):
                raise ValueError(f"{path}: chunk state version {meta.get('version')!r}; accepted: {STATE_VERSION}")
            if fingerprint is not None and meta.get("fingerprint") != fingerprint:
                raise ValueError(f"{path}: chunk state was made with other parameters or another model")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        propagated = {int(k.split(".", 1)[1]): v for k, v in tensors.items() if k.startswith("propagated.")}
        return cls(int(meta["end"]), tensors["latents"], tensors["image"], tensors["last_frame"],
                   propagated, meta.get("fingerprint", ""))


def fingerprint(params: dict) -> str:
    """A stable hash of the parameters that shape the numbers."""
    import hashlib

    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]
