"""The official Upscale-A-Video model folder: its layout, where it is, and reading it strictly.

The official release is a folder ``upscale_a_video/`` holding diffusers-style JSON configs
and pickled ``.bin`` state dicts. ``.bin`` files are read with ``weights_only=True`` (no
pickled code runs); a ``.safetensors`` file next to one is preferred. Every failure is a
:class:`ModelLoadError` whose one-line message names the file.

This module is the I/O layer only: it imports neither VapourSynth nor any model class, and
torch only inside the functions that read or load tensors, so ``uav doctor`` and
``uav download`` can use it where torch is missing. Assembling the models from what it reads
is :meth:`vs_uav.engine.pipeline.UpscalePipeline.from_pretrained`'s job.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, TypeVar, Union

if TYPE_CHECKING:
    import torch

    from vs_uav.core.models.raft import RAFT

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
T = TypeVar("T")


class ModelLoadError(RuntimeError):
    """A model folder or weight file is missing, corrupted or does not fit its config."""


@dataclass(frozen=True)
class Component:
    """Where one component of the official release lives inside the model folder."""

    config: str
    weights: tuple[str, ...]  # candidates, preferred first
    optional: bool = False


# The official layout (github sczhou/Upscale-A-Video, pretrained_models/upscale_a_video).
LAYOUT: dict[str, Component] = {
    "unet": Component("unet/unet_video_config.json", ("unet/unet_video.safetensors", "unet/unet_video.bin")),
    "vae_3d": Component("vae/vae_3d_config.json", ("vae/vae_3d.safetensors", "vae/vae_3d.bin")),
    "vae_video": Component(
        "vae/vae_video_config.json", ("vae/vae_video.safetensors", "vae/vae_video.bin"), optional=True
    ),
    "text_encoder": Component(
        "text_encoder/config.json", ("text_encoder/model.safetensors", "text_encoder/pytorch_model.bin")
    ),
    "scheduler": Component("scheduler/scheduler_config.json", ()),
    "low_res_scheduler": Component("low_res_scheduler/scheduler_config.json", ()),
    "propagator": Component("", ("propagator/raft-things.safetensors", "propagator/raft-things.pth"), optional=True),
}
MODEL_INDEX = "model_index.json"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILES = ("vocab.json", "merges.txt")
# The VAEs a folder may hold: ``vae="3d"`` reads LAYOUT["vae_3d"], ``vae="video"`` LAYOUT["vae_video"].
VAE_CHOICES = ("3d", "video")  # = UpscaleSettings.vae's choices (a test checks)
# The x4 upscaler's limit, used when a folder has no model_index.json.
DEFAULT_MAX_NOISE_LEVEL = 350

_HINT = "run `uav download` to fetch or repair the model folder"


def default_model_dir() -> Path:
    """$UAV_MODEL_DIR, else the user data folder that `uav download` fills."""
    env = os.environ.get("UAV_MODEL_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("vs-uav")) / "upscale_a_video"


# -- layout checks -------------------------------------------------------------------------------


def weights_file(folder: PathLike, name: str) -> Optional[Path]:
    """The weight file of component ``name`` (safetensors preferred), or None when absent."""
    folder = Path(folder).expanduser()
    for rel in LAYOUT[name].weights:
        if (folder / rel).is_file():
            return folder / rel
    return None


def find_weights(folder: PathLike, name: str) -> Path:
    """The weight file of component ``name``; a ModelLoadError naming the official file if absent."""
    path = weights_file(folder, name)
    if path is None:
        raise ModelLoadError(f"{Path(folder).expanduser() / LAYOUT[name].weights[-1]}: file is missing; {_HINT}")
    return path


def check_vae(vae: str) -> str:
    """``vae`` if it is one of :data:`VAE_CHOICES`, else a ValueError saying what is accepted
    (the settings model's check: one rule for every front end)."""
    from vs_uav.settings import SETTINGS_BY_NAME

    return SETTINGS_BY_NAME["vae"].check(vae)


def check_folder(folder: PathLike, vae: str = "3d") -> Path:
    """Fail fast, naming the first missing piece, before anything heavy is loaded.

    Checks presence only (configs, weight files, tokenizer); contents are checked when read.
    Returns the folder with ``~`` expanded.
    """
    check_vae(vae)
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: model folder not found; {_HINT}, or set UAV_MODEL_DIR")
    for name in ("unet", f"vae_{vae}", "text_encoder", "scheduler", "low_res_scheduler"):
        comp = LAYOUT[name]
        if not (folder / comp.config).is_file():
            raise ModelLoadError(f"{folder / comp.config}: file is missing; {_HINT}")
        if comp.weights:
            find_weights(folder, name)
    for fname in TOKENIZER_FILES:
        if not (folder / TOKENIZER_DIR / fname).is_file():
            raise ModelLoadError(f"{folder / TOKENIZER_DIR / fname}: file is missing; {_HINT}")
    return folder


# -- configs -------------------------------------------------------------------------------------


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; a ModelLoadError naming the file if it is missing or not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: file is missing; {_HINT}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelLoadError(f"{path}: not a readable JSON file ({e}); {_HINT}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object, found {type(data).__name__}; {_HINT}")
    return data


def read_config(folder: PathLike, name: str, parse: Callable[[dict[str, Any]], T]) -> T:
    """Component ``name``'s JSON config, turned into an object by ``parse``.

    A ValueError or TypeError from ``parse`` (an unknown key, a bad value) becomes a
    ModelLoadError naming the config file.
    """
    path = Path(folder).expanduser() / LAYOUT[name].config
    data = read_json(path)
    try:
        return parse(data)
    except (ValueError, TypeError) as e:
        raise ModelLoadError(f"{path}: {' '.join(str(e).split())}") from None


def max_noise_level(folder: PathLike, default: int = DEFAULT_MAX_NOISE_LEVEL) -> int:
    """The largest usable ``noise_level`` (``model_index.json``; 350 for the x4 upscaler)."""
    path = Path(folder).expanduser() / MODEL_INDEX
    if not path.is_file():
        return default
    value = read_json(path).get("max_noise_level", default)
    if not isinstance(value, int) or value < 0:
        raise ModelLoadError(f"{path}: max_noise_level={value!r} must be a non-negative integer")
    return value


# -- weights -------------------------------------------------------------------------------------


def read_state_dict(path: Path) -> dict[str, "torch.Tensor"]:
    """Read a ``.safetensors`` or torch-saved state dict onto the CPU, never running pickled code."""
    import torch

    if not path.is_file():
        raise ModelLoadError(f"{path}: file is missing; {_HINT}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # torch and safetensors raise a zoo of types for damaged files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"{path}: truncated or corrupted weight file ({reason}); {_HINT}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelLoadError(f"{path}: not a state dict of tensors; {_HINT}")
    return sd


def _preview(keys: Iterable[str], n: int = 3) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def check_state_dict(
    expected: dict[str, tuple[int, ...]],
    found: dict[str, "torch.Tensor"],
    path: PathLike,
    config: str = "its config",
    ignore: Iterable[str] = (),
) -> None:
    """Raise a ModelLoadError unless ``found`` has exactly the keys and shapes of ``expected``."""
    ignore = set(ignore)
    missing = expected.keys() - found.keys()
    unexpected = found.keys() - expected.keys() - ignore
    wrong = [k for k in expected.keys() & found.keys() if tuple(found[k].shape) != tuple(expected[k])]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_preview(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_preview(unexpected)}")
    if wrong:
        k = sorted(wrong)[0]
        problems.append(
            f"{len(wrong)} shape mismatch(es), e.g. {k}: file {tuple(found[k].shape)} vs {config} {tuple(expected[k])}"
        )
    if problems:
        raise ModelLoadError(f"{path}: does not match {config}: " + "; ".join(problems))


def load_weights(
    module: "torch.nn.Module",
    path: Path,
    config: str = "its config",
    ignore: Iterable[str] = (),
    rename: Optional[Callable[[str], str]] = None,
) -> "torch.nn.Module":
    """Strictly load the state dict at ``path`` into ``module`` (keys and shapes must match).

    ``ignore`` names obsolete keys the file may hold (after renaming); ``rename`` maps file
    keys to module keys where a library renamed its modules. Returns ``module``.
    """
    sd = read_state_dict(path)
    if rename is not None:
        sd = {rename(k): v for k, v in sd.items()}
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    check_state_dict(expected, sd, path, config, ignore)
    ignore = set(ignore)
    module.load_state_dict({k: v for k, v in sd.items() if k not in ignore}, strict=True)
    return module


def torch_dtype(name: Optional[str]) -> Optional["torch.dtype"]:
    """The torch dtype called ``name`` (float32, float16, bfloat16); None for None."""
    if name is None:
        return None
    import torch

    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in table:
        raise ValueError(f"dtype={name!r} is not supported; accepted: {', '.join(table)}")
    return table[name]


def default_method(model_dir: PathLike) -> str:
    """``"raft"`` when the model folder holds the RAFT propagator weights, else ``"dis"``."""
    return "raft" if raft_weights(model_dir) is not None else "dis"


def raft_weights(model_dir: PathLike) -> Optional[Path]:
    """The RAFT weight file in a model folder (safetensors preferred), or None."""
    return weights_file(model_dir, "propagator")


def load_raft(path: PathLike, device: Union[str, "torch.device"] = "cpu", dtype: Optional["torch.dtype"] = None
              ) -> "RAFT":
    """Load ``raft-things.pth`` (or ``.safetensors``) strictly, ready for inference (float32
    unless ``dtype``).

    Raises :class:`ModelLoadError` (one line naming the file) when the file is missing,
    unreadable or does not hold exactly RAFT-large's keys and shapes.
    """
    import torch

    from vs_uav.core.models.raft import CHECKPOINT_NAME, RAFT, checkpoint_key

    path = Path(path).expanduser()
    model = load_weights(RAFT(), path, CHECKPOINT_NAME, rename=checkpoint_key)
    model.to(device=device, dtype=dtype or torch.float32).eval().requires_grad_(False)
    logger.info("loaded RAFT from %s on %s as %s", path, device, dtype or torch.float32)
    return model
