"""The captioners' folders: which models caption scenes, where their weights live, and whether
a folder holds what loading needs.

A captioner is a vision-language model in the Hugging Face layout (``config.json``, the
processor's and tokenizer's files, safetensors weights), loaded with ``transformers``
(:mod:`vs_uav.engine.captioner`). :func:`check_captioner_folder` is the cheap check (files
present, the config of the expected architecture) that runs before anything loads;
:func:`verify_captioner_folder` also compares every weight file's keys and shapes with the
model its config builds (on the meta device: nothing is allocated), as ``uav download`` and
``uav doctor`` verify the upscaler. :func:`download_captioner` fetches a folder from the hub
or copies one (``--from FOLDER``) through a staging folder, moved into place when verified.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from vs_uav.weights.download import Progress, _check_space, _copy_resumable, _first_line, _hardlink, staging_dir
from vs_uav.weights.folder import WeightsError, tensor_shapes

logger = logging.getLogger(__name__)

PathLike = os.PathLike | str


@dataclass(frozen=True)
class CaptionerSpec:
    """One captioner: its name on the command line, where the hub has it, what its config says
    it is, and what the README says of it."""

    name: str
    repo: str  # the Hugging Face repository (transformers' native classes)
    model_type: str  # config.json's model_type
    parameters: str  # size, in words
    licence: str


CAPTIONERS: dict[str, CaptionerSpec] = {spec.name: spec for spec in (
    # The default: small (0.23 B), MIT licensed, seconds per image on a CPU, and its detailed
    # caption names the things and materials in the picture, which is what steers texture.
    CaptionerSpec("florence-2", "florence-community/Florence-2-base", "florence2", "0.23 B", "MIT"),
    CaptionerSpec("florence-2-large", "florence-community/Florence-2-large", "florence2", "0.77 B", "MIT"),
    # The official captioner: LLaVA-1.5-13B, in transformers' native Llava classes.
    CaptionerSpec("llava-1.5", "llava-hf/llava-1.5-13b-hf", "llava", "13 B", "Llama 2 Community License"),
)}
DEFAULT_CAPTIONER = "florence-2"
CONFIG = "config.json"
# A processor needs its image processor's config and a tokenizer; transformers writes these names.
PROCESSOR_FILES = (("preprocessor_config.json", "processor_config.json"), ("tokenizer.json", "tokenizer.model"),
                   ("tokenizer_config.json",))
_WANTED = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja")  # what a folder needs from the hub
_HINT = "run `uav download --captioner {name}` to fetch or repair it"


def check_captioner_name(name: str) -> CaptionerSpec:
    """The spec of ``name``; ValueError naming it and the captioners there are."""
    if name not in CAPTIONERS:
        raise ValueError(f"--captioner {name!r}; accepted: {', '.join(CAPTIONERS)}")
    return CAPTIONERS[name]


def default_captioners_dir() -> Path:
    """``$UAV_CAPTIONER_DIR``, else ``captioners/`` in the user data folder, beside the model."""
    env = os.environ.get("UAV_CAPTIONER_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("vs-uav")) / "captioners"


def captioner_dir(name: str, root: Optional[PathLike] = None) -> Path:
    """Where captioner ``name``'s folder is (or goes): ``root/name``."""
    check_captioner_name(name)
    return (Path(root).expanduser() if root is not None else default_captioners_dir()) / name


def weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def check_captioner_folder(folder: PathLike, spec: CaptionerSpec) -> Path:
    """The folder, if it has a ``config.json`` of ``spec``'s architecture, a processor, a
    tokenizer and weights; else a WeightsError naming the first missing or wrong file. Reads
    only small JSON files: it runs before anything loads."""
    folder = Path(folder).expanduser()
    hint = _HINT.format(name=spec.name)
    if not folder.is_dir():
        raise WeightsError(f"{folder}: captioner {spec.name!r} is not there; {hint}")
    config = _read_config(folder / CONFIG, hint)
    if config.get("model_type") != spec.model_type:
        raise WeightsError(f"{folder / CONFIG}: model_type {config.get('model_type')!r}; captioner {spec.name!r} "
                           f"is a {spec.model_type!r} model; {hint}", folder / CONFIG)
    for names in PROCESSOR_FILES:
        if not any((folder / n).is_file() for n in names):
            raise WeightsError(f"{folder / names[0]}: file is missing; {hint}", folder / names[0])
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(_read_config(index, hint).get("weight_map", {}).values()))
        for shard in shards:
            if not (folder / shard).is_file():
                raise WeightsError(f"{folder / shard}: file is missing (named by {index.name}); {hint}", folder / shard)
    elif not weight_files(folder):
        raise WeightsError(f"{folder / 'model.safetensors'}: file is missing; {hint}", folder / "model.safetensors")
    return folder


def _read_config(path: Path, hint: str) -> dict:
    if not path.is_file():
        raise WeightsError(f"{path}: file is missing; {hint}", path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise WeightsError(f"{path}: not a readable JSON file ({_first_line(e)}); {hint}", path) from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: not a JSON object; {hint}", path)
    return data


def expected_shapes(folder: Path) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """The shapes of the tensors the folder's config builds (on the meta device: nothing is
    allocated), and those of the weights tied to others (which files may leave out)."""
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = transformers.AutoModelForImageTextToText.from_config(config)
    state = model.state_dict()
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    return [tuple(v.shape) for k, v in state.items() if k not in tied], [tuple(state[k].shape) for k in tied if k in state]


def verify_captioner_folder(folder: PathLike, spec: CaptionerSpec) -> Path:
    """:func:`check_captioner_folder`, then every weight file read (headers only) and its
    tensors' shapes compared with those of the model the config builds: a truncated file, a
    tensor of another shape, a missing or an extra tensor is named in one line. (Files name
    their tensors in the layout of the transformers version that wrote them, which the loader
    renames; shapes do not change with the names.)"""
    from collections import Counter

    folder = check_captioner_folder(folder, spec)
    hint = _HINT.format(name=spec.name)
    built, tied = expected_shapes(folder)
    found: Counter = Counter()
    for path in weight_files(folder):
        found.update(tuple(shape) for shape in tensor_shapes(path, hint).values())
    missing = Counter(built) - found
    extra = found - Counter(built) - Counter(tied)
    if missing or extra:
        shape, count = next(iter((missing or extra).items()))
        what = "missing from the weight files" if missing else "in the weight files but not in the model"
        raise WeightsError(f"{folder}: {sum((missing or extra).values())} tensors {what} (e.g. {count} of shape "
                           f"{list(shape)}); {hint}", None)
    return folder


def download_captioner(name: str, dest: Optional[PathLike] = None, source: str = "",
                       progress: Optional[Progress] = None, log: Optional[Callable[[str], None]] = None) -> Path:
    """Fetch captioner ``name`` into ``dest`` (default :func:`captioner_dir`): from the hub
    (resumable: the hub's cache keeps finished files; hard-linked where the filesystem allows)
    or, with ``source``, from a folder. Verified in a staging folder, then moved into place;
    a verified ``dest`` is left alone."""
    spec = check_captioner_name(name)
    dest = Path(dest).expanduser().absolute() if dest is not None else captioner_dir(name)
    say = log or logger.info
    try:
        verify_captioner_folder(dest, spec)
        say(f"{dest}: captioner {name!r} already complete and verified; nothing to do")
        return dest
    except WeightsError:
        pass
    say(f"captioner {name!r}: {spec.repo} ({spec.parameters} parameters, {spec.licence})")
    src = _source_folder(spec, source)
    staging = staging_dir(dest)
    files = [p for p in sorted(src.iterdir()) if p.is_file() and not p.name.startswith(".")]
    _check_space(staging, sum(p.stat().st_size for p in files))
    for p in files:
        if not _hardlink(p, staging / p.name):
            _copy_resumable(lambda p=p: open(p, "rb"), p.stat().st_size, staging / p.name, p.name, progress)
    verify_captioner_folder(staging, spec)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(staging, dest)
    say(f"{dest}: captioner {name!r} complete and verified")
    return dest


def _source_folder(spec: CaptionerSpec, source: str) -> Path:
    if source:
        path = Path(source).expanduser()
        if not path.is_dir():
            raise WeightsError(f"--from {source!r}: no such folder; accepted: a folder holding captioner "
                               f"{spec.name!r} in the Hugging Face layout")
        return check_captioner_folder(path, spec)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec.repo, allow_patterns=list(_WANTED)))
    except Exception as e:
        raise WeightsError(f"{spec.repo}: cannot download captioner {spec.name!r} from the Hugging Face hub "
                           f"({type(e).__name__}: {_first_line(e)}); check your connection and re-run to resume, "
                           "or fetch it elsewhere and use --from FOLDER") from None
