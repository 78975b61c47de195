"""Reading the official Upscale-A-Video model folder, strictly and with clear errors.

The official release is a folder ``upscale_a_video/`` holding diffusers-style configs
and pickled ``.bin`` state dicts. ``.bin`` files are read with ``weights_only=True``
(no pickled code runs); a ``.safetensors`` file next to one is preferred.
Every failure is a :class:`ModelLoadError` whose one-line message names the file.
"""

from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import torch

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]


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

_HINT = "run `uav download` to fetch or repair the model folder"


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: file is missing; {_HINT}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelLoadError(f"{path}: not a readable JSON file ({e}); {_HINT}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object, found {type(data).__name__}; {_HINT}")
    return data


def find_weights(folder: Path, name: str) -> Path:
    """The weight file of component ``name``: safetensors when present, else the official file."""
    comp = LAYOUT[name]
    for rel in comp.weights:
        if (folder / rel).is_file():
            return folder / rel
    raise ModelLoadError(f"{folder / comp.weights[-1]}: file is missing; {_HINT}")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or torch-saved state dict onto the CPU, never running pickled code."""
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
    found: dict[str, torch.Tensor],
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
    module: torch.nn.Module,
    path: Path,
    config: str = "its config",
    ignore: Iterable[str] = (),
    rename: Optional[Callable[[str], str]] = None,
) -> torch.nn.Module:
    """Strictly load the state dict at ``path`` into ``module`` (keys and shapes must match).

    ``ignore`` names obsolete keys the file may hold; ``rename`` maps file keys to
    module keys where a library renamed its modules.
    """
    sd = read_state_dict(path)
    if rename is not None:
        sd = {rename(k): v for k, v in sd.items()}
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    check_state_dict(expected, sd, path, config, ignore)
    ignore = set(ignore)
    module.load_state_dict({k: v for k, v in sd.items() if k not in ignore}, strict=True)
    return module


def check_folder(folder: PathLike, vae: str = "3d") -> Path:
    """Fail fast, naming the first missing piece, before anything heavy is loaded."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: model folder not found; {_HINT}, or set UAV_MODEL_DIR")
    needed = ["unet", f"vae_{vae}", "text_encoder", "scheduler", "low_res_scheduler"]
    for name in needed:
        comp = LAYOUT[name]
        if not (folder / comp.config).is_file():
            raise ModelLoadError(f"{folder / comp.config}: file is missing; {_HINT}")
        if comp.weights:
            find_weights(folder, name)
    for fname in TOKENIZER_FILES:
        if not (folder / TOKENIZER_DIR / fname).is_file():
            raise ModelLoadError(f"{folder / TOKENIZER_DIR / fname}: file is missing; {_HINT}")
    return folder


def max_noise_level(folder: PathLike, default: int = 350) -> int:
    """The largest usable ``noise_level`` (``model_index.json``; 350 for the x4 upscaler)."""
    path = Path(folder) / MODEL_INDEX
    if not path.is_file():
        return default
    value = read_json(path).get("max_noise_level", default)
    if not isinstance(value, int) or value < 0:
        raise ModelLoadError(f"{path}: max_noise_level={value!r} must be a non-negative integer")
    return value


def torch_dtype(name: Optional[str]) -> Optional[torch.dtype]:
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name is None:
        return None
    if name not in table:
        raise ValueError(f"dtype={name!r} is not supported; accepted: {', '.join(table)}")
    return table[name]


VAE_CHOICES = ("3d", "video")


@dataclass
class UpscaleAVideoModel:
    """Every component of one loaded model folder, ready for the pipeline."""

    folder: Path
    unet: torch.nn.Module
    vae: torch.nn.Module
    prompt_encoder: Any
    scheduler: Any
    low_res_scheduler: Any
    max_noise_level: int
    vae_kind: str


def load_model(
    folder: PathLike,
    vae: str = "3d",
    device: Union[str, torch.device] = "cpu",
    dtype: Optional[Union[str, torch.dtype]] = None,
) -> UpscaleAVideoModel:
    """Load the official model folder strictly: configs from the folder, every weight key checked.

    ``dtype`` applies to the U-Net and text encoder; the VAE always runs in float32,
    as in the official inference.
    """
    from .models.text_encoder import PromptEncoder
    from .models.unet_video import UNetVideoConfig, UNetVideoModel
    from .models.vae_video import AutoencoderKLVideo, VAEVideoConfig
    from .scheduling import DDIMScheduler, LowResScheduler, SchedulerConfig

    if vae not in VAE_CHOICES:
        raise ValueError(f"vae={vae!r} is not supported; accepted: {', '.join(VAE_CHOICES)}")
    if isinstance(dtype, str) or dtype is None:
        dtype = torch_dtype(dtype) or torch.float32
    folder = check_folder(folder, vae)

    def config(name: str, parse):
        path = folder / LAYOUT[name].config
        try:
            return parse(read_json(path))
        except (ValueError, TypeError) as e:
            raise ModelLoadError(f"{path}: {e}") from None

    unet_cfg = config("unet", UNetVideoConfig.from_dict)
    vae_cfg = config(f"vae_{vae}", VAEVideoConfig.from_dict)
    unet = load_weights(UNetVideoModel(unet_cfg), find_weights(folder, "unet"), LAYOUT["unet"].config)
    vae_model = load_weights(
        AutoencoderKLVideo(vae_cfg), find_weights(folder, f"vae_{vae}"), LAYOUT[f"vae_{vae}"].config
    )
    prompt_encoder = PromptEncoder.from_folder(
        folder / TOKENIZER_DIR, folder / LAYOUT["text_encoder"].config, find_weights(folder, "text_encoder")
    )
    scheduler = DDIMScheduler(config("scheduler", SchedulerConfig.from_dict))
    low_res = LowResScheduler(config("low_res_scheduler", SchedulerConfig.from_dict))

    unet.to(device=device, dtype=dtype).eval().requires_grad_(False)
    prompt_encoder.text_model.to(device=device, dtype=dtype).requires_grad_(False)
    vae_model.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
    logger.info("loaded %s (vae=%s) on %s as %s", folder, vae, device, dtype)
    return UpscaleAVideoModel(
        folder, unet, vae_model, prompt_encoder, scheduler, low_res, max_noise_level(folder), vae
    )
