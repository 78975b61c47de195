"""What one chunk hands to the next and to the disk: the chunk state, the output type and the cache files.

A clip is denoised chunk by chunk. At every step the U-Net windows that straddle a chunk
boundary see the previous chunk's latents of that step as fixed context, and the forward
propagation sweep continues from the previous chunk's propagated state. :class:`ChunkState`
is that hand-over: small, explicit, and serialisable (safetensors, atomically written with a
checksum) so that a render can be resumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Union

import torch

from vs_uav.errors import UavError

if TYPE_CHECKING:
    from vs_uav.settings import UpscaleSettings

logger = logging.getLogger(__name__)


STATE_VERSION = 3  # 2: every cache file carries a checksum; 3: scene anchor, final latents, look-ahead


LATENTS_FILE = "latents.safetensors"


STATE_FILE = "state.safetensors"


class CacheError(UavError, ValueError):
    """A cache file that cannot be used: damaged, truncated, or made by something else."""


@dataclass
class UpscaleOutput:
    frames: Optional[torch.Tensor]  # (1, 3, T, 4H, 4W) in [-1, 1], float32 on the CPU; None when not decoded
    latents: torch.Tensor  # (1, 4, T, H, W) final latents, float32 on the CPU


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Write atomically (temporary name, then rename) with a checksum: a cache file is either
    complete and verifiable or absent."""
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in tensors.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={**meta, "version": str(STATE_VERSION), "sha256": _checksum(tensors)})
    tmp.replace(path)


def load_tensors(path: Path, fingerprint: Optional[str] = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read what :func:`save_tensors` wrote; CacheError (naming the file) unless it is intact
    and, with ``fingerprint``, made by the same settings and model."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own types for truncated headers and data
        raise CacheError(f"{path}: unreadable ({type(e).__name__}: {str(e).strip() or 'no detail'})") from None
    if meta.get("version") != str(STATE_VERSION):
        raise CacheError(f"{path}: cache version {meta.get('version')!r}; accepted: {STATE_VERSION}")
    if meta.get("sha256") != _checksum(tensors):
        raise CacheError(f"{path}: checksum mismatch (damaged file)")
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        raise CacheError(f"{path}: made with other settings or another model")
    return tensors, meta


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
    anchor: int = 0  # the scene's first frame: where U-Net windows and decode groups are laid from
    final: Optional[torch.Tensor] = None  # (1, C, F, h, w): final latents of the last F <= 2 frames (decode)
    fingerprint: str = ""  # what produced it (parameters, model); checked before use

    @property
    def context(self) -> int:
        return self.latents.shape[3]

    def save(self, path: Union[str, Path]) -> None:
        """Write atomically: a state file is either complete or absent."""
        tensors = {"latents": self.latents, "image": self.image, "last_frame": self.last_frame}
        tensors.update({f"propagated.{k}": v for k, v in self.propagated.items()})
        if self.final is not None:
            tensors["final"] = self.final
        save_tensors(Path(path), tensors, {"end": str(self.end), "anchor": str(self.anchor),
                                           "fingerprint": self.fingerprint})

    @classmethod
    def load(cls, path: Union[str, Path], fingerprint: Optional[str] = None) -> "ChunkState":
        """The state saved at ``path``; CacheError naming the file when it cannot be used."""
        tensors, meta = load_tensors(Path(path), fingerprint)
        try:
            propagated = {int(k.split(".", 1)[1]): v for k, v in tensors.items() if k.startswith("propagated.")}
            return cls(int(meta["end"]), tensors["latents"], tensors["image"], tensors["last_frame"],
                       propagated, int(meta["anchor"]), tensors.get("final"), meta.get("fingerprint", ""))
        except (KeyError, ValueError) as e:
            raise CacheError(f"{path}: not a chunk state ({type(e).__name__}: {e})") from None


def fingerprint(settings: "UpscaleSettings", model_id: str, dtype: Any) -> str:
    """What produced a chunk: the settings that shape the numbers, the model, the dtype."""
    blob = json.dumps({"settings": settings.output_values(), "model": model_id, "dtype": str(dtype),
                       "version": STATE_VERSION}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def source_digest(video: torch.Tensor) -> str:
    """A chunk's source frames, hashed: cached latents are only used for the same frames."""
    return hashlib.sha256(video.float().contiguous().numpy().tobytes()).hexdigest()[:16]


def check_writable(folder: Path, name: str = "cache_dir") -> None:
    """Fail before any work when ``folder`` cannot be created or written."""
    probe = folder / f".uav-write-test-{threading.get_ident()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"{name}={str(folder)!r} is not writable ({e.strerror or e}); "
                         "accepted: a folder this user can create and write") from None


class ChunkEngine(Protocol):
    """What the chunk driver needs of an engine (``UpscalePipeline`` is one): the driver is
    written against this, not against the pipeline, which itself drives chunks through it."""

    device: torch.device
    dtype: torch.dtype

    @property
    def model_id(self) -> str:
        """The model's identity, for cache fingerprints."""

    def limits(self) -> tuple[int, int]:
        """(the highest noise level, the highest usable diffusion timestep) the model accepts."""

    def configure(self, settings: "UpscaleSettings") -> None:
        """Apply the settings' accelerations (weights, offload, compile) in place."""

    def check_video(self, video: torch.Tensor) -> None:
        """ValueError unless ``video`` is a (1, 3, T, H, W) clip in [-1, 1] the model takes."""

    def upscale_chunk(self, video: torch.Tensor, start: int, settings: "UpscaleSettings",
                      state: Optional[ChunkState] = None,
                      flows: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                      boundary_flows: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                      latents: Optional[torch.Tensor] = None, image_noise: Optional[torch.Tensor] = None,
                      callback: Optional[Callable[[int, int], None]] = None, decode: bool = True,
                      end: Optional[int] = None) -> tuple[UpscaleOutput, ChunkState]:
        """One chunk (frames ``start`` on), continued from ``state``: its output and hand-over."""

    def decode(self, latents: torch.Tensor, video: torch.Tensor, settings: "UpscaleSettings") -> torch.Tensor:
        """Final latents to frames, with the low-res ``video`` the VAE decoder is conditioned on."""

