"""Getting and checking the official weights: verify, download, convert.

The official release is a Google Drive folder ``upscale_a_video/`` of pickled ``.bin``
files. This module verifies a folder against the key/shape manifests of the full-size
official models (shipped in ``vs_uav/data/manifests``), fetches it from Google Drive, a
Hugging Face repository or a local folder/archive into a staging folder that is moved into
place only when complete and verified, and rewrites it to safetensors.

Every failure is a :class:`WeightsError` (defined next to the one reader of weight files in
:mod:`vs_uav.weights.folder`) with a one-line message naming the file and the next step.
Progress goes to ``logging`` and an optional callback; never to stdout.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Union

from vs_uav.weights.folder import (
    LAYOUT,
    MODEL_INDEX,
    REDOWNLOAD,
    TOKENIZER_DIR,
    TOKENIZER_FILES,
    WeightsError,
    check_state_dict,
    tensor_shapes,
)

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
Progress = Callable[[str, int, int], None]  # (file, bytes done, bytes total)


# Weight-bearing components and their manifests (keys and shapes of the full-size models).
MANIFEST_FILES = {
    "unet": "unet_video.json",
    "vae_3d": "vae_3d.json",
    "vae_video": "vae_video.json",
    "text_encoder": "text_encoder.json",
    "propagator": "raft_things.json",
}
OPTIONAL_PARTS = ("vae_video", "propagator")
# Buffers older libraries saved and newer ones drop: a file may hold them or not.
MAY_BE_ABSENT = {"text_encoder": frozenset({"text_model.embeddings.position_ids"})}


class DamagedArchive(WeightsError):
    """An archive that cannot be read to its end (a bad or interrupted transfer)."""


@dataclass(frozen=True)
class Manifest:
    """Every state-dict key of one component with its shape."""

    parameters: int
    keys: dict[str, tuple[int, ...]]
    name: str = field(default="", compare=False)  # what a mismatch is said not to match

    @classmethod
    def from_json(cls, data: Mapping, name: str = "") -> "Manifest":
        return cls(int(data["parameters"]), {k: tuple(v) for k, v in data["keys"].items()}, name)

    def to_json(self) -> dict:
        return {"parameters": self.parameters, "keys": {k: list(v) for k, v in self.keys.items()}}


def load_manifests(folder: Optional[PathLike] = None) -> dict[str, Manifest]:
    """The manifests in ``folder`` (default: the official full-size ones shipped with vs-uav)."""
    out = {}
    for part, name in MANIFEST_FILES.items():
        if folder is None:
            text = resources.files("vs_uav").joinpath("data", "manifests", name).read_text(encoding="utf-8")
            source = f"vs_uav/data/manifests/{name}"
        else:
            path = Path(folder) / name
            if not path.is_file():
                continue  # a custom manifest set may leave optional parts out
            text, source = path.read_text(encoding="utf-8"), str(path)
        try:
            name = f"the official {part} weights" if folder is None else source
            out[part] = Manifest.from_json(json.loads(text), name)
        except (ValueError, KeyError, TypeError) as e:
            raise WeightsError(f"{source}: not a manifest ({e})") from None
    return out


# -- checking a weight file against its manifest ---------------------------------------------------

def check_weights(part: str, path: Path, manifest: Manifest) -> None:
    """A WeightsError naming ``path`` unless its keys and shapes (read without loading the
    tensors) are the manifest's: the one reader and the one check of :mod:`vs_uav.weights.folder`."""
    check_state_dict(manifest.keys, tensor_shapes(path, REDOWNLOAD), path, manifest.name or f"the {part} manifest",
                     MAY_BE_ABSENT.get(part, ()), REDOWNLOAD)


# -- the layout ------------------------------------------------------------------------------------

def parts_wanted(vae_video: bool = True, raft: bool = True) -> tuple[str, ...]:
    skip = set() if vae_video else {"vae_video"}
    skip |= set() if raft else {"propagator"}
    return tuple(p for p in LAYOUT if p not in skip)


def weight_files(folder: Path, part: str) -> list[Path]:
    """The weight files of ``part`` present in ``folder`` (every candidate that exists)."""
    return [folder / rel for rel in LAYOUT[part].weights if (folder / rel).is_file()]


def belongs_to(rel: str, skipped: Iterable[str]) -> bool:
    """Whether a relative path is a file of a skipped optional part."""
    for part in skipped:
        comp = LAYOUT[part]
        names = {comp.config, *comp.weights} - {""}
        if rel in names or (part == "propagator" and rel.startswith("propagator/")):
            return True
    return False


def verify_folder(folder: PathLike, manifests: Optional[Mapping[str, Manifest]] = None,
                  parts: Optional[Iterable[str]] = None, log: Optional[Callable[[str], None]] = None) -> Path:
    """Check a model folder: layout, every config parses, every weight file's keys and shapes.

    ``manifests`` defaults to the official full-size ones; ``parts`` to every component
    (leave out ``vae_video`` / ``propagator`` for a folder fetched without them). Raises
    :class:`WeightsError` naming the first problem; returns the folder.
    """
    from transformers import CLIPTextConfig

    from vs_uav.core.models.unet_video import UNetVideoConfig
    from vs_uav.core.models.vae_video import VAEVideoConfig
    from vs_uav.core.scheduling import SchedulerConfig

    folder = Path(folder).expanduser()
    manifests = load_manifests() if manifests is None else manifests
    parts = tuple(parts_wanted() if parts is None else parts)
    if not folder.is_dir():
        raise WeightsError(f"{folder}: model folder not found; run `uav download` (or set UAV_MODEL_DIR)")
    parsers = {"unet": UNetVideoConfig.from_json_file, "vae_3d": VAEVideoConfig.from_json_file,
               "vae_video": VAEVideoConfig.from_json_file, "text_encoder": CLIPTextConfig.from_json_file,
               "scheduler": SchedulerConfig.from_json_file, "low_res_scheduler": SchedulerConfig.from_json_file}

    def parse_json(path: Path, parse: Callable = lambda p: json.loads(p.read_text(encoding="utf-8"))) -> None:
        if not path.is_file():
            raise WeightsError(f"{path}: file is missing; run `uav download` to fetch it", path)
        try:
            parse(path)
        except Exception as e:
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise WeightsError(f"{path}: config does not parse ({reason}); "
                               "delete it and run `uav download` again", path) from None

    parse_json(folder / MODEL_INDEX)
    for name in TOKENIZER_FILES:
        parse_json(folder / TOKENIZER_DIR / name, (lambda p: json.loads(p.read_text(encoding="utf-8")))
                   if name.endswith(".json") else (lambda p: p.read_text(encoding="utf-8")))
    for part in parts:
        comp = LAYOUT[part]
        if comp.config:
            parse_json(folder / comp.config, parsers[part])
        if not comp.weights:
            continue
        files = weight_files(folder, part)
        if not files:
            raise WeightsError(f"{folder / comp.weights[-1]}: file is missing; run `uav download` to fetch it")
        if part not in manifests:
            raise WeightsError(f"no manifest for {part}; accepted manifests: {', '.join(sorted(manifests))}")
        for path in files:
            t0 = time.monotonic()
            check_weights(part, path, manifests[part])
            if log:
                log(f"verified {path.relative_to(folder)} ({time.monotonic() - t0:.1f} s)")
    return folder


def write_manifests(folder: PathLike, out: PathLike, parts: Optional[Iterable[str]] = None) -> Path:
    """Manifests of the weights in ``folder`` (for a model of another size: a finetune, a test model)."""
    folder, out = Path(folder), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for part in parts or MANIFEST_FILES:
        files = weight_files(folder, part)
        if not files:
            continue
        import math

        shapes = tensor_shapes(files[0])
        manifest = Manifest(sum(math.prod(s) for s in shapes.values()), shapes)
        (out / MANIFEST_FILES[part]).write_text(json.dumps(manifest.to_json()), encoding="utf-8")
    return out


# -- sources ---------------------------------------------------------------------------------------


# -- safetensors -----------------------------------------------------------------------------------


