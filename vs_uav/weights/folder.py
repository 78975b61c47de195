"""The official Upscale-A-Video model folder: its layout, where it is, and reading it strictly.

The official release is a folder ``upscale_a_video/`` holding diffusers-style JSON configs
and pickled ``.bin`` state dicts. ``.bin`` files are read with ``weights_only=True`` (no
pickled code runs); a ``.safetensors`` file next to one is preferred. Every failure is a
:class:`ModelLoadError` whose one-line message names the file.

It holds the one reader of weight files (:func:`read_state_dict`, :func:`tensor_shapes`), the
one check of their keys and shapes (:func:`check_state_dict`) and the one construction of a
component from its config with its parameters on the meta device (:func:`build_component`),
which loading fills without a random initialisation first (:func:`load_component`).

It imports neither VapourSynth nor, at import time, torch or any model class (those only
inside the functions that need them), so ``uav doctor`` and ``uav download`` can use it where
torch is missing. Putting the components together is
:meth:`vs_uav.engine.pipeline.UpscalePipeline.from_pretrained`'s job.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, TypeVar, Union

from vs_uav.errors import UavError

if TYPE_CHECKING:
    import torch

    from vs_uav.core.models.raft import RAFT

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
T = TypeVar("T")


class ModelLoadError(UavError, RuntimeError):
    """A model folder or weight file is missing, corrupted or does not fit its config."""


class WeightsError(ModelLoadError):
    """A model folder, a source or a weight file is not what it must be (one-line message).

    ``file`` is the file found bad, when there is one: a download drops it from its
    staging folder so that the next run fetches it again.
    """

    def __init__(self, message: str, file: Optional[Path] = None):
        super().__init__(message)
        self.file = file


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

# The advice for a damaged weight file when verifying rather than loading.
REDOWNLOAD = "delete it and run `uav download` again"


def _unpickling_reason(e: Exception) -> str:
    """The line of torch's weights-only refusal that says what is wrong, without its advice."""
    text = str(e).split("WeightsUnpickler error:", 1)[-1]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(
        ("Weights only load failed", "Check the documentation", "Please file an issue"))]
    return lines[0] if lines else "not a weight file"


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _read_weight_file(path: Path, load: bool, advice: str) -> dict[str, Any]:
    """The one reader of weight files: tensors (``load``) or their shapes, never running pickled
    code. Shapes come from the safetensors header or a memory-mapped zip checkpoint, so no data
    is read; tensors come memory-mapped where the format allows (safetensors, zip ``.bin``)."""
    import torch

    if not path.is_file():
        raise WeightsError(f"{path}: file is missing; {_HINT}", path)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as f:
                if not load:
                    return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
                sd = {k: f.get_tensor(k) for k in f.keys()}
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        if "GLOBAL" not in str(e):  # torch's advice (weights_only=False) is never quoted
            raise WeightsError(f"{path}: truncated or corrupted weight file ({_unpickling_reason(e)}); {advice}",
                               path) from None
        # torch's message advises weights_only=False, i.e. running the file's code: never here.
        raise WeightsError(f"{path}: holds pickled Python objects other than tensors (code that would run when "
                           f"loaded): not loaded; accepted: tensors only (safetensors, or a state dict saved by "
                           f"torch.save); {advice}", path) from None
    except Exception as e:  # torch and safetensors raise a zoo of types for damaged files
        reason = _first_line(e)
        raise WeightsError(f"{path}: truncated or corrupted weight file ({reason}); {advice}", path) from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path}: not a state dict of tensors; {advice}", path)
    return sd if load else {k: tuple(v.shape) for k, v in sd.items()}


def read_state_dict(path: Path, advice: str = _HINT) -> dict[str, "torch.Tensor"]:
    """The tensors of a ``.safetensors`` or torch-saved state dict, on the CPU and memory-mapped
    where the format allows. A WeightsError naming the file (ending with ``advice``) if it is
    missing or damaged."""
    return _read_weight_file(Path(path), True, advice)


def tensor_shapes(path: Path, advice: str = _HINT) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of a weight file, read without loading its tensors (as :func:`read_state_dict`
    reads and fails)."""
    return _read_weight_file(Path(path), False, advice)


def _preview(keys: Iterable[str], n: int = 3) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def check_state_dict(
    expected: Mapping[str, Sequence[int]],
    found: Mapping[str, Sequence[int]],
    path: PathLike,
    against: str = "its config",
    optional: Iterable[str] = (),
    advice: str = "",
) -> None:
    """The one check of a weight file's keys and shapes (``found``) against a model's, a config's or
    a manifest's (``expected``, called ``against`` in the message): a WeightsError naming the file
    unless they are the same, ``optional`` keys aside (they may be absent or extra)."""
    optional = set(optional)
    missing = expected.keys() - found.keys() - optional
    unexpected = found.keys() - expected.keys() - optional
    wrong = sorted(k for k in expected.keys() & found.keys() if tuple(found[k]) != tuple(expected[k]))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_preview(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_preview(unexpected)}")
    if wrong:
        k = wrong[0]
        problems.append(f"{len(wrong)} shape mismatch(es), e.g. {k}: {tuple(found[k])} in the file, "
                        f"{tuple(expected[k])} expected")
    if problems:
        tail = f"; {advice}" if advice else ""
        raise WeightsError(f"{path}: does not match {against}: " + "; ".join(problems) + tail, Path(path))


def _model_shapes(module: "torch.nn.Module") -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def load_weights(
    module: "torch.nn.Module",
    path: Path,
    config: str = "its config",
    ignore: Iterable[str] = (),
    rename: Optional[Callable[[str], str]] = None,
) -> "torch.nn.Module":
    """Strictly load the state dict at ``path`` into ``module`` (keys and shapes must match),
    built with :func:`empty_weights` or not: the file's tensors replace the module's
    (``assign=True``), cast to the module's dtypes, so nothing is copied or initialised twice.

    ``ignore`` names obsolete keys the file may hold (after renaming); ``rename`` maps file
    keys to module keys where a library renamed its modules. Returns ``module``. On the CPU
    the weights keep mapping the file: a weight file is replaced by renaming a new one over
    it (as `uav download` and `uav convert` do), never rewritten in place under a loaded model.
    """
    sd = read_state_dict(path)
    if rename is not None:
        sd = {rename(k): v for k, v in sd.items()}
    own = module.state_dict()
    check_state_dict(_model_shapes(module), {k: v.shape for k, v in sd.items()}, path, config, ignore)
    module.load_state_dict({k: sd[k].to(own[k].dtype) for k in own}, strict=True, assign=True)
    empty = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
    if empty:  # a tensor the state dict does not cover and construction did not make
        raise ModelLoadError(f"{path}: {len(empty)} model tensor(s) neither in the file nor built, "
                             f"e.g. {empty[0]}")
    return module


# -- building models without their weights -------------------------------------------------------

_EMPTY = threading.local()  # this thread's empty_weights() depth
_PATCH = threading.Lock()
_patched: list[Callable] = []  # [the original register_parameter] while any thread needs the patch
_users = 0


def _register_parameter(module: "torch.nn.Module", name: str, param: Optional["torch.nn.Parameter"]) -> None:
    _patched[0](module, name, param)
    if param is not None and getattr(_EMPTY, "depth", 0) and not param.is_meta:
        module._parameters[name] = type(param)(param.to("meta"), requires_grad=param.requires_grad)


@contextlib.contextmanager
def empty_weights() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device: no memory and no random
    initialisation, for :func:`load_weights` to fill (accelerate's ``init_empty_weights``).

    Buffers are built as usual, so those a module computes in ``__init__`` and does not save
    (``persistent=False``: CLIP's position ids) hold their real values. Only the calling
    thread is affected: the patched ``register_parameter`` leaves other threads alone.
    """
    import torch

    global _users
    with _PATCH:
        if not _users:
            _patched[:] = [torch.nn.Module.register_parameter]
            torch.nn.Module.register_parameter = _register_parameter
        _users += 1
    depth = getattr(_EMPTY, "depth", 0)
    _EMPTY.depth = depth + 1
    try:
        yield
    finally:
        _EMPTY.depth = depth
        with _PATCH:
            _users -= 1
            if not _users:
                torch.nn.Module.register_parameter = _patched.pop()


@dataclass
class Built:
    """One component built from its config by :func:`build_component`, its weights not loaded."""

    model: Any  # what the pipeline keeps: the module, or the PromptEncoder around the text model
    module: "torch.nn.Module"  # what the weight file fills
    rename: Optional[Callable[[str], str]] = None  # file key -> module key
    ignore: tuple[str, ...] = ()  # obsolete keys a file may hold


def build_component(folder: PathLike, name: str) -> Built:
    """Component ``name`` (``unet``, ``vae_3d``, ``vae_video`` or ``text_encoder``) of a model folder,
    built from its config under :func:`empty_weights` (parameters on the meta device).

    The one construction behind loading (:func:`load_component`) and ``uav doctor``'s check that
    a folder's weights fit its configs. Raises ModelLoadError naming the config (or tokenizer).
    """
    from vs_uav.core.models.text_encoder import PromptEncoder, checkpoint_keys, clip_text_config
    from vs_uav.core.models.unet_video import UNetVideoConfig, UNetVideoModel
    from vs_uav.core.models.vae_video import AutoencoderKLVideo, VAEVideoConfig

    folder = Path(folder).expanduser()
    if name == "unet":
        config = read_config(folder, name, UNetVideoConfig.from_dict)
        with empty_weights():
            module = UNetVideoModel(config)
        return Built(module, module)
    if name in ("vae_3d", "vae_video"):
        config = read_config(folder, name, VAEVideoConfig.from_dict)
        with empty_weights():
            module = AutoencoderKLVideo(config)
        return Built(module, module)
    if name != "text_encoder":
        raise ValueError(f"name={name!r}; accepted: 'unet', 'vae_3d', 'vae_video', 'text_encoder'")
    config = read_config(folder, name, clip_text_config)
    try:
        with empty_weights():
            encoder = PromptEncoder.from_config(folder / TOKENIZER_DIR, config)
    except ValueError as e:  # the message names the tokenizer folder
        raise ModelLoadError(str(e)) from None
    rename, ignore = checkpoint_keys(encoder.text_model)
    return Built(encoder, encoder.text_model, rename, ignore)


def load_component(folder: PathLike, name: str) -> Any:
    """Component ``name`` of a model folder built (:func:`build_component`) and strictly loaded
    from its weight file, on the CPU in the file's layout; the caller moves it."""
    built = build_component(folder, name)
    load_weights(built.module, find_weights(folder, name), LAYOUT[name].config, built.ignore, built.rename)
    return built.model


def fits_config(folder: PathLike, name: str) -> None:
    """A WeightsError unless component ``name``'s weight file has exactly the keys and shapes of
    the model its config builds, as loading checks them, without reading the tensors. Nothing to
    check when the file is absent or has no config (the RAFT weights)."""
    path = weights_file(folder, name)
    if path is None or not LAYOUT[name].config:
        return
    built = build_component(folder, name)
    found = tensor_shapes(path)
    if built.rename is not None:
        found = {built.rename(k): v for k, v in found.items()}
    check_state_dict(_model_shapes(built.module), found, path, LAYOUT[name].config, built.ignore)


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
    with empty_weights():
        model = RAFT()
    model = load_weights(model, path, CHECKPOINT_NAME, rename=checkpoint_key)
    model.to(device=device, dtype=dtype or torch.float32).eval().requires_grad_(False)
    logger.info("loaded RAFT from %s on %s as %s", path, device, dtype or torch.float32)
    return model
