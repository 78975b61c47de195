"""Getting the official weights: from Google Drive, Hugging Face, a folder or an archive, resumable, staged and verified before they replace anything.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Mapping, Optional

from vs_uav.weights.folder import LAYOUT
from vs_uav.weights.verify import (
    MANIFEST_FILES,
    OPTIONAL_PARTS,
    DamagedArchive,
    Manifest,
    PathLike,
    Progress,
    WeightsError,
    belongs_to,
    check_weights,
    load_manifests,
    parts_wanted,
    verify_folder,
)

logger = logging.getLogger(__name__)


# The official Google Drive folder (README of github sczhou/Upscale-A-Video).
GDRIVE_FOLDER_ID = "1O8pbeR1hsRlFUU8O4EULe-lOKNGEWZl1"


LICENCE_NOTE = ("The official Upscale-A-Video weights are licensed under the NTU S-Lab License 1.0: "
                "non-commercial use only (https://github.com/sczhou/Upscale-A-Video/blob/master/LICENSE).")


STAGING_PREFIX = "."


STAGING_SUFFIX = ".partial"


_ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


_DISK_MARGIN = 256 << 20  # keep some room: a full disk breaks more than this download


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


def _is_junk(rel: str) -> bool:
    """Files a zip made on a Mac carries along (``__MACOSX/``, ``._*``, ``.DS_Store``)."""
    parts = PurePosixPath(rel).parts
    return bool(parts) and (parts[0] == "__MACOSX" or parts[-1].startswith("._") or parts[-1] == ".DS_Store")


def _pick_archive(names: Iterable[str]) -> Optional[str]:
    """The archive that holds the release when a folder or archive holds one instead of the
    layout (the official Drive folder has held ``upscale_a_video.zip``)."""
    found = sorted(n for n in names if n.lower().endswith(_ARCHIVES) and not _is_junk(n))
    named = [n for n in found if "upscale" in PurePosixPath(n).name.lower()]
    return (named or found or [None])[0]


def downloads_dir(staging: Path) -> Path:
    """Where an archive of the release is kept while it is unpacked into ``staging``."""
    return staging.with_name(staging.name + ".download")


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
    done = _copy_stream(src_open, part, done, size, label, progress)
    if done != size:
        raise WeightsError(f"{label}: source ended after {done} of {size} bytes; the source is truncated")
    os.replace(part, target)


def _write_error(part: Path, e: OSError) -> WeightsError:
    """A failed write (full disk, read-only folder) is ours to name, not the source's."""
    return WeightsError(f"{part}: cannot write ({e.strerror or e}); free some space or choose another folder "
                        "with --dir, then re-run the same command to resume")


def _copy_stream(src_open: Callable[[], "object"], part: Path, done: int, size: int, label: str,
                 progress: Optional[Progress]) -> int:
    """Append the source's bytes from offset ``done`` to ``part``; returns the bytes now in it."""
    try:
        dst = open(part, "ab")
    except OSError as e:
        raise _write_error(part, e) from None
    with dst, src_open() as src:
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
            try:
                dst.write(block)
            except OSError as e:
                raise _write_error(part, e) from None
            done += len(block)
            if progress:
                progress(label, done, size)
        try:
            dst.flush()  # a full disk may only show here
        except OSError as e:
            raise _write_error(part, e) from None
    return done


def _fetch_folder(src: Path, staging: Path, skipped: tuple[str, ...], progress: Optional[Progress],
                  link: bool = False) -> None:
    """Copy the model folder found in ``src`` into ``staging``; with ``link``, hard-link files
    where the filesystem allows (the hub's cache: immutable blobs, no second copy on disk)."""
    files = [p for p in src.rglob("*") if p.is_file()]
    root = _find_root(str(p.relative_to(src).as_posix()) for p in files)
    if root is None:
        inner = _pick_archive(p.relative_to(src).as_posix() for p in files)
        if inner is not None:  # e.g. the folder gdown or a browser fetched: it holds the zip
            return _fetch_archive(src / inner, staging, skipped, progress)
        raise WeightsError(f"{src}: not an Upscale-A-Video model folder (no {LAYOUT['unet'].config} inside); "
                           "accepted: the official upscale_a_video folder or an archive of it")
    base = src / root if root else src
    todo = []
    for p in files:
        rel = p.relative_to(base).as_posix() if p.is_relative_to(base) else None
        if rel is None or rel.endswith(".part") or _is_junk(rel) or belongs_to(rel, skipped):
            continue
        size = p.stat().st_size
        if link and not (staging / rel).exists() and _hardlink(p, staging / rel):
            if progress:
                progress(rel, size, size)
            continue
        todo.append((p, rel, size))
    needed = sum(size - _have(staging / rel) for _, rel, size in todo)
    _check_space(staging, needed)
    for p, rel, size in todo:
        try:
            _copy_resumable(lambda p=p: open(p, "rb"), size, staging / rel, rel, progress)
        except OSError as e:  # write errors are WeightsErrors already: this is the source
            raise WeightsError(f"{p}: cannot read ({e.strerror or e}); check the source folder") from None


def _hardlink(src: Path, target: Path) -> bool:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(src.resolve(), target)
        return True
    except OSError:  # another filesystem, or links not supported: copy instead
        return False


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
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:  # WeightsErrors pass through
        raise DamagedArchive(f"{src}: damaged or truncated archive ({e}); download it again", src) from None


def _extract(src: Path, members, staging: Path, skipped: tuple[str, ...], progress: Optional[Progress]) -> None:
    root = _find_root(name for name, _, _ in members)
    if root is None:
        inner = _pick_archive(name for name, _, _ in members)
        if inner is not None:  # an archive of the archive (a browser's download of the Drive folder)
            size, opener = next((size, opener) for name, size, opener in members if name == inner)
            unpacked = downloads_dir(staging) / PurePosixPath(inner).name
            _check_space(unpacked.parent, size - _have(unpacked))
            _copy_resumable(opener, size, unpacked, PurePosixPath(inner).name, progress)
            return _fetch_archive(unpacked, staging, skipped, progress)
        raise WeightsError(f"{src}: not an archive of an Upscale-A-Video model folder (no "
                           f"{LAYOUT['unet'].config} inside)")
    todo = []
    for name, size, opener in members:
        if not name.startswith(root) or _is_junk(name):
            continue
        rel = name[len(root):]
        # Refuse paths that would escape the staging folder.
        if PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts:
            raise WeightsError(f"{src}: unsafe member path {name!r} in archive; refusing to extract")
        if not belongs_to(rel, skipped):
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
                           f"{_first_line(e)}); check the name and your connection, then re-run to resume") from None
    _fetch_folder(Path(snapshot), staging, skipped, progress, link=True)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def _fetch_gdrive(folder_id: str, staging: Path, skipped: tuple[str, ...], progress: Optional[Progress],
                  expected_bytes: int = 0) -> None:
    """List the Drive folder, then fetch each wanted file straight into ``staging``.

    Per file rather than ``gdown.download_folder``: skipped parts are never transferred,
    files finished by an earlier run are not fetched again, and nothing is stored twice.
    gdown keeps an unfinished file as ``NAME<random>.part`` next to it and continues it
    with ``resume=True``.
    """
    import gdown

    browser = ("or download the folder in a browser (https://drive.google.com/drive/folders/"
               f"{folder_id}) and run `uav download --from PATH`")
    try:
        listing = gdown.download_folder(id=folder_id, output=str(staging), skip_download=True, quiet=True,
                                        timeout=(30, 300))
    except Exception as e:
        raise WeightsError(f"Google Drive folder {folder_id}: cannot list it ({type(e).__name__}: {_first_line(e)}); "
                           f"check your connection and re-run, {browser}") from None
    listing = [(f.id, f.path.replace("\\", "/")) for f in listing or ()]
    root = _find_root(path for _, path in listing)
    archive = _pick_archive(path for _, path in listing) if root is None else None
    if root is None and archive is None:
        raise WeightsError(f"Google Drive folder {folder_id}: no {LAYOUT['unet'].config} inside; "
                           f"it is not the Upscale-A-Video release, {browser}")
    if archive is not None:
        # The folder holds the release as one archive: fetch it (resumable) beside the staging
        # folder and unpack it from there; it is deleted once the model folder is in place.
        keep = downloads_dir(staging) / PurePosixPath(archive).name
        _check_space(keep.parent, max(expected_bytes - _have(keep), 0))
        todo = [(fid, path) for fid, path in listing if path == archive]
        targets = {path: keep for _, path in todo}
    else:
        todo = [(fid, path[len(root):]) for fid, path in listing
                if path.startswith(root) and not belongs_to(path[len(root):], skipped)]
        targets = {rel: staging / rel for _, rel in todo}
    for fid, rel in todo:
        target = targets[rel]
        if target.is_file():
            continue  # finished by an earlier run
        target.parent.mkdir(parents=True, exist_ok=True)
        report = (lambda done, total, rel=rel: progress(rel, done, total or 0)) if progress else None
        try:
            gdown.download(id=fid, output=str(target), quiet=True, resume=True, progress=report, retries=3,
                           timeout=(30, 300))
        except Exception as e:  # gdown's DownloadError, requests' errors, quota pages, a full disk
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _write_error(target, e) from None  # ours to fix, not the network's
            raise WeightsError(f"{rel}: download from Google Drive failed ({type(e).__name__}: {_first_line(e)}); "
                               f"re-run `uav download` to resume, {browser}") from None
    if archive is not None:
        try:
            _fetch_archive(keep, staging, skipped, progress)
        except DamagedArchive as e:
            keep.unlink(missing_ok=True)  # a bad transfer: the next run fetches it again
            raise DamagedArchive(f"{str(e).split('; ')[0]}; deleted it: re-run `uav download` to fetch it again",
                                 keep) from None


def estimated_bytes(manifests: Mapping[str, Manifest], parts: Iterable[str]) -> int:
    """Disk space a download of ``parts`` needs, from the manifests (float32, as released)."""
    return sum(manifests[p].parameters * 4 for p in parts if p in manifests) + (4 << 20)  # + configs, tokenizer


def fetch(source: str, staging: Path, skipped: tuple[str, ...] = (), progress: Optional[Progress] = None,
          expected_bytes: int = 0) -> None:
    """Bring ``source`` into ``staging`` (resumable): 'gdrive', 'hf:OWNER/NAME[@REV]', a folder or an archive.

    ``expected_bytes`` is what a remote source will bring (its sizes are not known before
    the transfer): free space for it is checked first. Local sources are measured exactly.
    """
    if source == "gdrive" or source.startswith("hf:"):
        if source.startswith("hf:") and "/" not in source[3:]:
            raise WeightsError(f"--from {source!r}: accepted: hf:OWNER/NAME (a Hugging Face model repository)")
        have = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file()) if staging.is_dir() else 0
        _check_space(staging, max(expected_bytes - have, 0))
        if source == "gdrive":
            return _fetch_gdrive(GDRIVE_FOLDER_ID, staging, skipped, progress, expected_bytes)
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
    manifests = load_manifests() if manifests is None else manifests
    staging = staging_dir(dest)
    resuming = staging.is_dir()
    if dest.is_dir() and not force:
        try:
            verify_folder(dest, manifests, parts)
            say(f"{dest}: already complete and verified; nothing to do (--force fetches again)")
            return dest
        except WeightsError as e:
            say(f"{dest}: incomplete or damaged ({e}); fetching what is missing or damaged")
            _seed(dest, staging, manifests, say)
    if resuming:
        say(f"resuming the interrupted download in {staging}")
    try:
        fetch(source, staging, skipped, progress, estimated_bytes(manifests, parts))
    except BaseException:
        for folder in (staging, downloads_dir(staging)):
            if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
                shutil.rmtree(folder, ignore_errors=True)  # nothing fetched: leave no trace
        raise
    try:
        verify_folder(staging, manifests, parts, log=say)
    except WeightsError as e:
        # Drop the bad file so that the next run fetches it again; keep the good ones.
        if e.file is not None and e.file.is_file() and staging in e.file.parents:
            e.file.unlink()
        raise
    for stray in staging.rglob("*.part"):  # an abandoned partial file has no place in a model folder
        stray.unlink()
    # Replace dest in two renames: a good folder is never half-replaced.
    old = dest.with_name(f"{STAGING_PREFIX}{dest.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        os.replace(dest, old)
    os.replace(staging, dest)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(downloads_dir(staging), ignore_errors=True)  # an archive the release came in
    say(f"{dest}: complete and verified")
    return dest


def _seed(dest: Path, staging: Path, manifests: Mapping[str, Manifest], say: Callable[[str], None]) -> None:
    """Hard-link the sound files of an existing, incomplete ``dest`` into ``staging`` so that
    only what is missing or damaged is fetched again (e.g. RAFT after a --no-raft download).

    Each weight file is checked on its own (keys and shapes), each JSON file parsed; a bad
    one is left behind and fetched again. Converted ``.safetensors`` are left out: they
    would shadow freshly fetched ``.bin`` files in the loaders; ``uav convert`` makes them again.
    """
    owner = {rel: part for part in MANIFEST_FILES for rel in LAYOUT[part].weights}
    dropped = []
    for p in sorted(dest.rglob("*")):
        rel = p.relative_to(dest).as_posix()
        if not p.is_file() or p.name.endswith(".part") or (staging / rel).exists():
            continue
        if p.suffix == ".safetensors":
            dropped.append(rel)
            continue
        try:
            if rel in owner and owner[rel] in manifests:
                check_weights(owner[rel], p, manifests[owner[rel]])
            elif p.suffix == ".json":
                json.loads(p.read_text(encoding="utf-8"))
        except (WeightsError, OSError, ValueError):
            continue  # damaged: fetched again
        _hardlink(p, staging / rel)  # where links are impossible the file is fetched again
    if dropped:
        say(f"not carried over: {', '.join(dropped)} (run `uav convert` again afterwards)")
