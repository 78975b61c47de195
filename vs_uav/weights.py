"""Getting and checking the official weights: verify, download, convert.

The official release is a Google Drive folder ``upscale_a_video/`` of pickled ``.bin``
files. This module verifies a folder against the key/shape manifests of the full-size
official models (shipped in ``vs_uav/data/manifests``), fetches it from Google Drive, a
Hugging Face repository or a local folder/archive into a staging folder that is moved into
place only when complete and verified, and rewrites it to safetensors.

Every failure is a :class:`WeightsError` with a one-line message naming the file and the
next step. Progress goes to ``logging`` and an optional callback; never to stdout.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile
import time
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Mapping, Optional, Union

from .loading import LAYOUT, MODEL_INDEX, TOKENIZER_DIR, TOKENIZER_FILES, ModelLoadError

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
Progress = Callable[[str, int, int], None]  # (file, bytes done, bytes total)

# The official Google Drive folder (README of github sczhou/Upscale-A-Video).
GDRIVE_FOLDER_ID = "1O8pbeR1hsRlFUU8O4EULe-lOKNGEWZl1"
LICENCE_NOTE = ("The official Upscale-A-Video weights are licensed under the NTU S-Lab License 1.0: "
                "non-commercial use only (https://github.com/sczhou/Upscale-A-Video/blob/master/LICENSE).")

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
STAGING_PREFIX = "."
STAGING_SUFFIX = ".partial"
_ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_DISK_MARGIN = 256 << 20  # keep some room: a full disk breaks more than this download


class WeightsError(ModelLoadError):
    """A model folder, a source or a weight file is not what it must be (one-line message)."""


@dataclass(frozen=True)
class Manifest:
    """Every state-dict key of one component with its shape."""

    parameters: int
    keys: dict[str, tuple[int, ...]]

    @classmethod
    def from_json(cls, data: Mapping) -> "Manifest":
        return cls(int(data["parameters"]), {k: tuple(v) for k, v in data["keys"].items()})

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
            out[part] = Manifest.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as e:
            raise WeightsError(f"{source}: not a manifest ({e})") from None
    return out


# -- reading keys and shapes without loading the tensors ------------------------------------------

def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of a weight file; safetensors headers and memory-mapped zip
    checkpoints are read without loading the data."""
    import torch

    if not path.is_file():
        raise WeightsError(f"{path}: file is missing; run `uav download` to fetch it")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # torch and safetensors raise many types for damaged files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(f"{path}: truncated or corrupted weight file ({reason}); "
                           "delete it and run `uav download` again") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path}: not a state dict of tensors; delete it and run `uav download` again")
    return {k: tuple(v.shape) for k, v in sd.items()}


def _check_shapes(part: str, path: Path, found: dict[str, tuple[int, ...]], manifest: Manifest) -> None:
    optional = MAY_BE_ABSENT.get(part, frozenset())
    missing = sorted(manifest.keys.keys() - found.keys() - optional)
    unexpected = sorted(found.keys() - manifest.keys.keys())
    wrong = sorted(k for k in manifest.keys.keys() & found.keys() if found[k] != manifest.keys[k])
    problem = ""
    if missing:
        problem = f"{len(missing)} missing key(s), e.g. {missing[0]}"
    elif unexpected:
        problem = f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}"
    elif wrong:
        k = wrong[0]
        problem = f"{len(wrong)} tensor(s) of the wrong shape, e.g. {k}: {found[k]}, expected {manifest.keys[k]}"
    if problem:
        raise WeightsError(f"{path}: not the official {part} weights ({problem}); "
                           "delete it and run `uav download` again")


# -- the layout ------------------------------------------------------------------------------------

def parts_wanted(vae_video: bool = True, raft: bool = True) -> tuple[str, ...]:
    skip = set() if vae_video else {"vae_video"}
    skip |= set() if raft else {"propagator"}
    return tuple(p for p in LAYOUT if p not in skip)


def _weight_files(folder: Path, part: str) -> list[Path]:
    """The weight files of ``part`` present in ``folder`` (every candidate that exists)."""
    return [folder / rel for rel in LAYOUT[part].weights if (folder / rel).is_file()]


def _belongs_to(rel: str, skipped: Iterable[str]) -> bool:
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

    from .models.unet_video import UNetVideoConfig
    from .models.vae_video import VAEVideoConfig
    from .scheduling import SchedulerConfig

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
            raise WeightsError(f"{path}: file is missing; run `uav download` to fetch it")
        try:
            parse(path)
        except Exception as e:
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise WeightsError(f"{path}: config does not parse ({reason}); "
                               "delete it and run `uav download` again") from None

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
        files = _weight_files(folder, part)
        if not files:
            raise WeightsError(f"{folder / comp.weights[-1]}: file is missing; run `uav download` to fetch it")
        if part not in manifests:
            raise WeightsError(f"no manifest for {part}; accepted manifests: {', '.join(sorted(manifests))}")
        for path in files:
            t0 = time.monotonic()
            _check_shapes(part, path, tensor_shapes(path), manifests[part])
            if log:
                log(f"verified {path.relative_to(folder)} ({time.monotonic() - t0:.1f} s)")
    return folder


def write_manifests(folder: PathLike, out: PathLike, parts: Optional[Iterable[str]] = None) -> Path:
    """Manifests of the weights in ``folder`` (for a model of another size: a finetune, a test model)."""
    folder, out = Path(folder), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for part in parts or MANIFEST_FILES:
        files = _weight_files(folder, part)
        if not files:
            continue
        import math

        shapes = tensor_shapes(files[0])
        manifest = Manifest(sum(math.prod(s) for s in shapes.values()), shapes)
        (out / MANIFEST_FILES[part]).write_text(json.dumps(manifest.to_json()), encoding="utf-8")
    return out


# -- sources ---------------------------------------------------------------------------------------

def staging_dir(dest: Path) -> Path:
    """Where a download into ``dest`` is assembled; kept across runs so that a re-run resumes."""
    return dest.with_name(f"{STAGING_PREFIX}{dest.name}{STAGING_SUFFIX}")


def _find_root(names: Iterable[str]) -> Optional[str]:
    """The prefix (``''`` or ``'a/b/'``) under which the official layout starts."""
    marker = LAYOUT["unet"].config
    for name in names:
        name = name.replace("\\", "/")
        if name == marker or name.endswith("/" + marker):
            return name[: len(name) - len(marker)]
    return None


def _check_space(target: Path, needed: int) -> None:
    target.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target).free
    if needed + _DISK_MARGIN > free:
        raise WeightsError(f"{target}: not enough free disk space: need {needed / 2**30:.2f} GiB, "
                           f"{free / 2**30:.2f} GiB free; free some space or choose another folder with --dir")


def _copy_resumable(src_open: Callable[[], "object"], size: int, target: Path, label: str,
                    progress: Optional[Progress]) -> None:
    """Copy a stream of ``size`` bytes to ``target`` through ``target.part``, continuing a
    ``.part`` left by an interrupted run; the final name appears only when complete."""
    if target.is_file() and target.stat().st_size == size:
        return  # done by an earlier run
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    done = part.stat().st_size if part.is_file() else 0
    if done > size:
        part.unlink()
        done = 0
    try:
        done = _copy_stream(src_open, part, done, size, label, progress)
    except OSError as e:
        if e.filename is None and not _is_write_error(e):
            raise  # a read error of the source: the caller names the source
        raise WeightsError(f"{part}: cannot write ({e.strerror or e}); free some space or fix the folder's "
                           "permissions, then re-run the same command to resume") from None
    if done != size:
        raise WeightsError(f"{label}: source ended after {done} of {size} bytes; the source is truncated")
    os.replace(part, target)


def _is_write_error(e: OSError) -> bool:
    import errno

    return e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG)


def _copy_stream(src_open: Callable[[], "object"], part: Path, done: int, size: int, label: str,
                 progress: Optional[Progress]) -> int:
    """Append the source's bytes from offset ``done`` to ``part``; returns the bytes now in it."""
    with src_open() as src, open(part, "ab") as dst:
        if done:
            if hasattr(src, "seek") and getattr(src, "seekable", lambda: True)():
                src.seek(done)
            else:  # a compressed stream cannot seek: skip what we have
                remaining = done
                while remaining:
                    remaining -= len(src.read(min(remaining, 1 << 20)))
            logger.info("resuming %s at %d of %d bytes", label, done, size)
        while True:
            block = src.read(8 << 20)
            if not block:
                break
            dst.write(block)
            done += len(block)
            if progress:
                progress(label, done, size)
    return done


def _fetch_folder(src: Path, staging: Path, skipped: tuple[str, ...], progress: Optional[Progress]) -> None:
    files = [p for p in src.rglob("*") if p.is_file()]
    root = _find_root(str(p.relative_to(src).as_posix()) for p in files)
    if root is None:
        raise WeightsError(f"{src}: not an Upscale-A-Video model folder (no {LAYOUT['unet'].config} inside); "
                           "accepted: the official upscale_a_video folder or an archive of it")
    base = src / root if root else src
    todo = []
    for p in files:
        rel = p.relative_to(base).as_posix() if p.is_relative_to(base) else None
        if rel is None or rel.endswith(".part") or _belongs_to(rel, skipped):
            continue
        todo.append((p, rel, p.stat().st_size))
    needed = sum(size - _have(staging / rel) for _, rel, size in todo)
    _check_space(staging, needed)
    for p, rel, size in todo:
        _copy_resumable(lambda p=p: open(p, "rb"), size, staging / rel, rel, progress)


def _have(path: Path) -> int:
    """Bytes of ``path`` already fetched (whole or in its ``.part``)."""
    if path.is_file():
        return path.stat().st_size
    part = path.with_name(path.name + ".part")
    return part.stat().st_size if part.is_file() else 0


def _fetch_archive(src: Path, staging: Path, skipped: tuple[str, ...], progress: Optional[Progress]) -> None:
    try:
        if zipfile.is_zipfile(src):
            with zipfile.ZipFile(src) as zf:
                members = [(i.filename, i.file_size, (lambda i=i, zf=zf: zf.open(i)))
                           for i in zf.infolist() if not i.is_dir()]
                _extract(src, members, staging, skipped, progress)
            return
        with tarfile.open(src) as tf:
            members = [(m.name, m.size, (lambda m=m, tf=tf: tf.extractfile(m))) for m in tf.getmembers() if m.isfile()]
            _extract(src, members, staging, skipped, progress)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        if isinstance(e, WeightsError):
            raise
        raise WeightsError(f"{src}: damaged or truncated archive ({e}); download it again") from None


def _extract(src: Path, members, staging: Path, skipped: tuple[str, ...], progress: Optional[Progress]) -> None:
    root = _find_root(name for name, _, _ in members)
    if root is None:
        raise WeightsError(f"{src}: not an archive of an Upscale-A-Video model folder (no "
                           f"{LAYOUT['unet'].config} inside)")
    todo = []
    for name, size, opener in members:
        if not name.startswith(root):
            continue
        rel = name[len(root):]
        # Refuse paths that would escape the staging folder.
        if PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts:
            raise WeightsError(f"{src}: unsafe member path {name!r} in archive; refusing to extract")
        if not _belongs_to(rel, skipped):
            todo.append((rel, size, opener))
    _check_space(staging, sum(size - _have(staging / rel) for rel, size, _ in todo))
    for rel, size, opener in todo:
        _copy_resumable(opener, size, staging / rel, rel, progress)


def _fetch_hf(repo: str, staging: Path, skipped: tuple[str, ...], progress: Optional[Progress]) -> None:
    from huggingface_hub import snapshot_download

    name, _, revision = repo.partition("@")
    ignore = [p for part in skipped for p in ({LAYOUT[part].config, *LAYOUT[part].weights} - {""})]
    if "propagator" in skipped:
        ignore.append("propagator/*")
    try:
        # The hub's cache resumes interrupted files and skips finished ones by itself.
        snapshot = snapshot_download(name, revision=revision or None, ignore_patterns=ignore or None)
    except Exception as e:
        raise WeightsError(f"hf:{repo}: cannot download from the Hugging Face hub ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}); check the name and your connection") from None
    _fetch_folder(Path(snapshot), staging, skipped, progress)


def _fetch_gdrive(folder_id: str, staging: Path, skipped: tuple[str, ...], progress: Optional[Progress]) -> None:
    import gdown

    raw = staging.with_name(staging.name + ".gdrive")
    try:
        # gdown resumes partial files and skips complete ones with resume=True.
        gdown.download_folder(id=folder_id, output=str(raw), quiet=progress is None, resume=True)
    except Exception as e:
        raise WeightsError(f"Google Drive folder {folder_id}: download failed ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}); re-run `uav download` to resume, or "
                           "download the folder in a browser and use `uav download --from PATH`") from None
    _fetch_folder(raw, staging, skipped, progress)
    shutil.rmtree(raw, ignore_errors=True)


def fetch(source: str, staging: Path, skipped: tuple[str, ...] = (), progress: Optional[Progress] = None) -> None:
    """Bring ``source`` into ``staging`` (resumable): 'gdrive', 'hf:OWNER/NAME[@REV]', a folder or an archive."""
    if source == "gdrive":
        return _fetch_gdrive(GDRIVE_FOLDER_ID, staging, skipped, progress)
    if source.startswith("hf:"):
        if "/" not in source[3:]:
            raise WeightsError(f"--from {source!r}: accepted: hf:OWNER/NAME (a Hugging Face model repository)")
        return _fetch_hf(source[3:], staging, skipped, progress)
    path = Path(source).expanduser()
    if path.is_dir():
        return _fetch_folder(path, staging, skipped, progress)
    if path.is_file():
        if not path.name.lower().endswith(_ARCHIVES):
            raise WeightsError(f"--from {source!r}: not a folder or an archive; accepted: 'gdrive', hf:OWNER/NAME, "
                               f"a folder or an archive ({', '.join(_ARCHIVES)})")
        return _fetch_archive(path, staging, skipped, progress)
    raise WeightsError(f"--from {source!r}: no such file or folder; accepted: 'gdrive', hf:OWNER/NAME, "
                       "a folder or an archive")


def download(dest: PathLike, source: str = "gdrive", *, vae_video: bool = True, raft: bool = True,
             manifests: Optional[Mapping[str, Manifest]] = None, force: bool = False,
             progress: Optional[Progress] = None, log: Optional[Callable[[str], None]] = None) -> Path:
    """Fetch, verify and move a model folder into ``dest``; returns ``dest``.

    Safe to re-run: a verified ``dest`` is left alone (unless ``force``), and an
    interrupted run's staging folder is resumed. ``dest`` is replaced only by a folder
    that is complete and verified.
    """
    dest = Path(dest).expanduser().absolute()
    parts = parts_wanted(vae_video, raft)
    skipped = tuple(p for p in OPTIONAL_PARTS if p not in parts)
    say = log or logger.info
    if dest.is_dir() and not force:
        try:
            verify_folder(dest, manifests, parts)
            say(f"{dest}: already complete and verified; nothing to do (--force fetches again)")
            return dest
        except WeightsError as e:
            say(f"{dest}: incomplete or damaged ({e}); fetching again")
    staging = staging_dir(dest)
    if staging.is_dir():
        say(f"resuming the interrupted download in {staging}")
    try:
        fetch(source, staging, skipped, progress)
    except BaseException:
        if staging.is_dir() and not any(staging.iterdir()):
            staging.rmdir()  # nothing fetched: leave no trace
        raise
    try:
        verify_folder(staging, manifests, parts, log=say)
    except WeightsError as e:
        # Drop the bad file so that the next run fetches it again; keep the good ones.
        bad = Path(str(e).split(":", 1)[0])
        if bad.is_file() and staging in bad.parents:
            bad.unlink()
        raise
    # Replace dest in two renames: a good folder is never half-replaced.
    old = dest.with_name(f"{STAGING_PREFIX}{dest.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        os.replace(dest, old)
    os.replace(staging, dest)
    shutil.rmtree(old, ignore_errors=True)
    say(f"{dest}: complete and verified")
    return dest


# -- safetensors -----------------------------------------------------------------------------------

def convert(folder: PathLike, fp16: bool = False, *, manifests: Optional[Mapping[str, Manifest]] = None,
            parts: Optional[Iterable[str]] = None, log: Optional[Callable[[str], None]] = None) -> list[Path]:
    """Write a ``.safetensors`` next to every official weight file of a verified folder.

    The loaders prefer safetensors (faster, no pickled code). ``fp16`` halves floating-point
    tensors. Each file is read back and compared before it takes its final name.
    """
    import torch
    from safetensors.torch import load_file, save_file

    from .loading import read_state_dict

    folder = Path(folder).expanduser()
    parts = tuple(p for p in (parts or parts_wanted()) if LAYOUT[p].weights)
    present = tuple(p for p in parts if _weight_files(folder, p) or p not in OPTIONAL_PARTS)
    verify_folder(folder, manifests, present)
    written = []
    for part in present:
        target, official = (folder / LAYOUT[part].weights[0]), (folder / LAYOUT[part].weights[-1])
        if not official.is_file() or target == official:
            continue
        sd = read_state_dict(official)
        # safetensors refuses shared storage (the official rotary freqs are one tensor
        # under many names): give every name its own contiguous copy.
        out = {k: (v.half() if fp16 and v.is_floating_point() else v).contiguous().clone() for k, v in sd.items()}
        tmp = target.with_name(target.name + ".part")
        save_file(out, str(tmp), metadata={"format": "pt", "converted_from": official.name})
        back = load_file(str(tmp))
        if back.keys() != out.keys() or any(not torch.equal(back[k], out[k]) for k in out):
            tmp.unlink()
            raise WeightsError(f"{target}: read-back differs from {official}; disk or memory fault, try again")
        os.replace(tmp, target)
        written.append(target)
        if log:
            log(f"wrote {target.relative_to(folder)}{' (fp16)' if fp16 else ''}")
    return written

