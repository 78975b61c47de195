"""`uav download` / `uav convert` and folder verification, on the tiny reference model
(no network: local folders and archives; the manifests are the tiny model's own)."""

from __future__ import annotations

import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import MANIFESTS, MODEL_DIR, copy_model

import vs_uav.weights.download as download_module
from vs_uav.app import cli
from vs_uav.engine.pipeline import UpscalePipeline
from vs_uav.weights.convert import convert
from vs_uav.weights.download import download, downloads_dir, estimated_bytes, staging_dir
from vs_uav.weights.folder import LAYOUT, REDOWNLOAD, find_weights, read_state_dict, tensor_shapes
from vs_uav.weights.verify import (
    MANIFEST_FILES,
    WeightsError,
    load_manifests,
    parts_wanted,
    verify_folder,
    write_manifests,
)

PARTS = parts_wanted(raft=False)  # the tiny model has no propagator/


def load_model(folder: Path, vae: str = "3d"):
    """The folder's models, loaded strictly (every key and shape checked)."""
    return UpscalePipeline.from_pretrained(folder, vae=vae, flow="dis").model


@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> dict:
    return load_manifests(write_manifests(MODEL_DIR, tmp_path_factory.mktemp("manifests")))


@pytest.fixture
def source(tmp_path) -> Path:
    """A writable copy of the tiny model, nested like the official download."""
    return copy_model(tmp_path / "drive" / "upscale_a_video")


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_shipped_manifests_are_the_reference_ones():
    shipped = load_manifests()
    assert set(shipped) == set(MANIFEST_FILES)
    for part, name in MANIFEST_FILES.items():
        ref = json.loads((MANIFESTS / name).read_text())
        assert shipped[part].to_json() == {"parameters": ref["parameters"], "keys": ref["keys"]}


def test_download_from_a_folder_verifies_and_is_safe_to_rerun(source, manifests, tmp_path):
    dest = tmp_path / "models" / "uav"
    assert download(dest, str(source.parent), raft=False, manifests=manifests) == dest.absolute()
    assert files_of(dest) == files_of(source)
    assert not staging_dir(dest).exists()
    load_model(dest)  # the loaders accept what download verified
    stamp = (dest / "unet" / "unet_video.bin").stat().st_mtime_ns
    said = []
    download(dest, str(source), raft=False, manifests=manifests, log=said.append)
    assert "already complete and verified" in said[0]
    assert (dest / "unet" / "unet_video.bin").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("kind", ["zip", "gztar"])
def test_download_from_an_archive_without_optional_parts(source, manifests, tmp_path, kind):
    archive = shutil.make_archive(str(tmp_path / "weights"), kind, source.parent.parent, "drive")
    dest = tmp_path / "uav"
    download(dest, archive, vae_video=False, raft=False, manifests=manifests)
    got = files_of(dest)
    assert "vae/vae_video.bin" not in got and "vae/vae_video_config.json" not in got
    assert got == {k: v for k, v in files_of(source).items() if not k.startswith("vae/vae_video")}
    load_model(dest, vae="3d")


def test_an_interrupted_download_resumes_where_it_stopped(source, manifests, tmp_path):
    dest = tmp_path / "uav"
    seen: list[tuple[str, int, int]] = []

    def interrupt(label, done, total):
        seen.append((label, done, total))
        if label == "unet/unet_video.bin" and done < total:
            raise KeyboardInterrupt  # the user pressed Ctrl+C halfway through the U-Net

    with pytest.raises(KeyboardInterrupt):
        download(dest, str(source), raft=False, manifests=manifests, progress=interrupt)
    staging = staging_dir(dest)
    assert not dest.exists()  # nothing half-written where the model is expected
    part = staging / "unet" / "unet_video.bin.part"
    part_size = part.stat().st_size
    assert part.is_file() and 0 < part_size < (source / "unet" / "unet_video.bin").stat().st_size
    finished = {p: p.stat().st_mtime_ns for p in staging.rglob("*") if p.is_file() and p.suffix != ".part"}
    assert finished

    seen.clear()
    download(dest, str(source), raft=False, manifests=manifests, progress=lambda *a: seen.append(a))
    assert files_of(dest) == files_of(source)
    # Continued from the .part: the first report already counts the bytes kept.
    kept, total = part_size, (source / "unet" / "unet_video.bin").stat().st_size
    unet = [done for label, done, _ in seen if label == "unet/unet_video.bin"]
    assert unet[0] > kept and unet[-1] == total
    copied_again = {label for label, _, _ in seen}
    assert not any(p.relative_to(staging).as_posix() in copied_again for p in finished)


def test_a_truncated_file_is_named_and_not_moved_into_place(source, manifests, tmp_path):
    unet = source / "unet" / "unet_video.bin"
    unet.write_bytes(unet.read_bytes()[: unet.stat().st_size // 2])
    with pytest.raises(WeightsError, match=r"unet_video\.bin: truncated or corrupted weight file .*; delete it "
                                           r"and run `uav download` again$"):
        verify_folder(source, manifests, PARTS)
    dest = tmp_path / "uav"
    with pytest.raises(WeightsError, match="unet_video.bin: truncated or corrupted"):
        download(dest, str(source), raft=False, manifests=manifests)
    assert not dest.exists()
    # The bad file is dropped from the staging folder so that a re-run fetches it again.
    assert not (staging_dir(dest) / "unet" / "unet_video.bin").exists()


def test_a_wrong_shape_or_key_is_named(source, manifests):
    path = source / "vae" / "vae_3d.bin"
    # Copies: the file is memory-mapped and about to be overwritten.
    sd = {k: v.clone() for k, v in read_state_dict(path).items()}
    key = "decoder.conv_out.weight"
    good = sd[key]
    sd[key] = torch.zeros(good.shape[0], good.shape[1] + 1, *good.shape[2:])
    torch.save(sd, path)
    # The manifest a mismatch is against is named: here the custom one's file.
    with pytest.raises(WeightsError, match=rf"vae_3d\.bin: does not match .*/vae_3d\.json: 1 shape mismatch\(es\), "
                                           rf"e.g. {key}: \(3, 33, 3, 3\) in the file, \(3, 32, 3, 3\) expected; "
                                           r"delete it and run `uav download` again$"):
        verify_folder(source, manifests, PARTS)
    sd[key] = good
    sd["decoder.extra.weight"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(WeightsError, match=r"1 unexpected key\(s\): decoder.extra.weight;"):
        verify_folder(source, manifests, PARTS)


def test_one_reader_for_shapes_and_tensors(tmp_path):
    """Shapes (safetensors header, memory-mapped .bin: no tensor read) and tensors come from the
    same reader, which fails the same way for both, with the caller's advice."""
    from safetensors.torch import save_file

    official = MODEL_DIR / "vae" / "vae_3d.bin"
    converted = tmp_path / "vae_3d.safetensors"
    save_file({k: v.contiguous() for k, v in read_state_dict(official).items()}, str(converted))
    for path in (official, converted):
        sd = read_state_dict(path)
        assert tensor_shapes(path) == {k: tuple(v.shape) for k, v in sd.items()} and len(sd) > 100
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(converted.read_bytes()[:5000])
    for read in (read_state_dict, tensor_shapes):
        with pytest.raises(WeightsError, match=rf"^{damaged}: truncated or corrupted weight file \(.+\); "
                                               rf"{REDOWNLOAD}$") as e:
            read(damaged, REDOWNLOAD)
        assert e.value.file == damaged  # what a download drops from its staging folder
        with pytest.raises(WeightsError, match=r"; run `uav download` to fetch or repair the model folder$"):
            read(damaged)


def test_the_official_manifests_refuse_a_model_of_another_size():
    with pytest.raises(WeightsError, match=r"unet_video\.bin: does not match the official unet weights: "):
        verify_folder(MODEL_DIR, None, PARTS)


def test_missing_files_and_bad_configs_are_named(source, manifests):
    (source / "tokenizer" / "merges.txt").unlink()
    with pytest.raises(WeightsError, match=r"tokenizer/merges\.txt: file is missing; run `uav download`"):
        verify_folder(source, manifests, PARTS)
    shutil.copy(MODEL_DIR / "tokenizer" / "merges.txt", source / "tokenizer" / "merges.txt")
    (source / "scheduler" / "scheduler_config.json").write_text('{"beta_schedule": "linear",')
    with pytest.raises(WeightsError, match=r"scheduler_config\.json: config does not parse"):
        verify_folder(source, manifests, PARTS)


def test_bad_sources_are_refused_in_one_line(tmp_path, manifests):
    dest = tmp_path / "uav"
    (tmp_path / "empty").mkdir()
    cases = [
        (str(tmp_path / "nope"), r"--from '.*nope': no such file or folder; accepted: 'gdrive', hf:OWNER/NAME"),
        (str(tmp_path / "empty"), r"empty: not an Upscale-A-Video model folder \(no unet/unet_video_config.json"),
        ("hf:justaname", r"--from 'hf:justaname': accepted: hf:OWNER/NAME"),
    ]
    (tmp_path / "notes.txt").write_text("hello")
    cases.append((str(tmp_path / "notes.txt"), "not a folder or an archive"))
    for src, message in cases:
        with pytest.raises(WeightsError, match=message):
            download(dest, src, raft=False, manifests=manifests)
        assert not dest.exists() and not staging_dir(dest).exists()


def test_damaged_and_hostile_archives(source, tmp_path, manifests):
    archive = Path(shutil.make_archive(str(tmp_path / "w"), "zip", source.parent))
    archive.write_bytes(archive.read_bytes()[:-200])  # lose the zip directory
    with pytest.raises(WeightsError, match=r"w\.zip: damaged or truncated archive"):
        download(tmp_path / "a", str(archive), raft=False, manifests=manifests)
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tf:
        tf.add(source / "unet" / "unet_video_config.json", "m/unet/unet_video_config.json")
        tf.add(source / "model_index.json", "m/../../escaped.json")
    with pytest.raises(WeightsError, match="unsafe member path"):
        download(tmp_path / "b", str(evil), raft=False, manifests=manifests)
    assert not (tmp_path / "escaped.json").exists()


def test_no_disk_space_is_reported_before_copying(source, tmp_path, manifests, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1 << 20))
    with pytest.raises(WeightsError, match=r"not enough free disk space: need 0\.0\d GiB, 0\.00 GiB free; free some"):
        download(tmp_path / "uav", str(source), raft=False, manifests=manifests)
    assert not (tmp_path / "uav").exists()
    assert not list(staging_dir(tmp_path / "uav").rglob("*.bin"))


def test_a_damaged_destination_is_replaced_whole(source, manifests, tmp_path):
    dest = tmp_path / "uav"
    shutil.copytree(source, dest)
    (dest / "vae" / "vae_3d.bin").write_bytes(b"garbage")
    download(dest, str(source), raft=False, manifests=manifests)
    assert files_of(dest) == files_of(source)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging or old copy left


@pytest.mark.parametrize("fp16", [False, True])
def test_convert_round_trip(source, manifests, fp16):
    written = convert(source, fp16=fp16, manifests=manifests, parts=PARTS)
    assert {p.relative_to(source).as_posix() for p in written} == {
        "unet/unet_video.safetensors", "vae/vae_3d.safetensors", "vae/vae_video.safetensors",
        "text_encoder/model.safetensors"}
    for part in ("unet", "vae_3d", "vae_video", "text_encoder"):
        assert find_weights(source, part).suffix == ".safetensors"  # the loaders prefer it
        official, converted = (read_state_dict(source / p) for p in reversed(LAYOUT[part].weights))
        assert official.keys() == converted.keys()
        for k, v in official.items():
            want = v.half() if fp16 and v.is_floating_point() else v
            assert converted[k].dtype == want.dtype and torch.equal(converted[k], want), k
    model = load_model(source)
    sd = model.unet.state_dict()
    official = read_state_dict(source / "unet" / "unet_video.bin")
    k = "conv_in.weight"
    assert torch.equal(sd[k], official[k].half().float() if fp16 else official[k])


def test_cli_download_convert_and_errors(source, manifests, tmp_path, capsys):
    mdir = write_manifests(MODEL_DIR, tmp_path / "m")
    dest = tmp_path / "out dir" / "uav é"
    assert cli.main(["download", "--from", str(source), "--dir", str(dest), "--no-raft",
                     "--manifests", str(mdir)]) == 0
    err = capsys.readouterr().err
    assert "S-Lab License 1.0" in err and "non-commercial" in err and "complete and verified" in err
    assert cli.main(["convert", "--dir", str(dest), "--manifests", str(mdir)]) == 0
    assert (dest / "unet" / "unet_video.safetensors").is_file()
    with pytest.raises(SystemExit) as e:
        cli.main(["download", "--from", str(tmp_path / "missing"), "--dir", str(tmp_path / "x")])
    assert str(e.value).startswith("uav download: --from ") and "no such file or folder" in str(e.value)
    assert not (tmp_path / "x").exists()
    assert capsys.readouterr().out == ""  # progress and messages go to stderr


def test_download_from_a_hugging_face_repository_in_the_hub_cache(source, manifests, tmp_path, monkeypatch):
    """hf:OWNER/NAME goes through huggingface_hub's cache (offline here: the snapshot is
    placed in the cache the way the hub lays it out)."""
    cache = tmp_path / "hub"
    repo = cache / "models--someone--upscale-a-video"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(source, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    dest = tmp_path / "uav"
    download(dest, "hf:someone/upscale-a-video", raft=False, manifests=manifests)
    assert files_of(dest) == files_of(source)
    with pytest.raises(WeightsError, match=r"hf:someone/missing: cannot download from the Hugging Face hub"):
        download(tmp_path / "other", "hf:someone/missing", raft=False, manifests=manifests)
    assert not (tmp_path / "other").exists()


class FakeDrive:
    """gdown's two calls, served from a local folder (no network): the folder listing and
    one file at a time, with its progress callback. ``fail_on`` makes one file fail."""

    def __init__(self, folder: Path, fail_on: str | None = None):
        self.folder, self.fail_on, self.fetched = folder, fail_on, []

    def download_folder(self, id, output, skip_download, quiet, **kw):
        from gdown.download import GoogleDriveFileToDownload

        assert skip_download and quiet  # we only list; files come one by one
        base = self.folder.parent  # the Drive folder holds upscale_a_video/
        return [GoogleDriveFileToDownload(id=str(p), path=p.relative_to(base).as_posix(),
                                          local_path=str(Path(output) / p.relative_to(base)))
                for p in sorted(self.folder.rglob("*")) if p.is_file()]

    def download(self, id, output, quiet, resume, progress=None, **kw):
        import gdown

        rel = Path(id).relative_to(self.folder).as_posix()
        if rel == self.fail_on:
            raise gdown.exceptions.DownloadError("Too many users have viewed or downloaded this file recently")
        self.fetched.append(rel)
        data = Path(id).read_bytes()
        Path(output).write_bytes(data)
        if progress:
            progress(len(data), len(data))
        return output


def test_download_from_google_drive_file_by_file_skips_optional_parts_and_resumes(source, manifests, tmp_path,
                                                                                  monkeypatch):
    import gdown

    drive = FakeDrive(source, fail_on="vae/vae_3d.bin")
    monkeypatch.setattr(gdown, "download_folder", drive.download_folder)
    monkeypatch.setattr(gdown, "download", drive.download)
    dest = tmp_path / "uav"
    with pytest.raises(WeightsError, match=r"^vae/vae_3d\.bin: download from Google Drive failed \(DownloadError: "
                                           r"Too many users.*\); re-run `uav download` to resume, or download the "
                                           r"folder in a browser \(https://drive.google.com/drive/folders/"):
        download(dest, "gdrive", vae_video=False, raft=False, manifests=manifests)
    assert not dest.exists() and staging_dir(dest).is_dir()
    first = list(drive.fetched)
    assert first and not any(rel.startswith("vae/vae_video") for rel in first)  # skipped parts never transferred

    drive.fail_on, drive.fetched = None, []
    seen = []
    download(dest, "gdrive", vae_video=False, raft=False, manifests=manifests,
                     progress=lambda *a: seen.append(a))
    assert not set(first) & set(drive.fetched)  # finished files are not fetched again
    assert "vae/vae_3d.bin" in drive.fetched and ("vae/vae_3d.bin", 0, 0) not in seen
    assert files_of(dest) == {k: v for k, v in files_of(source).items() if not k.startswith("vae/vae_video")}
    assert not staging_dir(dest).exists()


def test_a_remote_download_checks_free_space_first(manifests, tmp_path, monkeypatch):
    import gdown

    def never(*a, **kw):
        raise AssertionError("nothing may be transferred without the space for it")

    monkeypatch.setattr(gdown, "download_folder", never)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1 << 20))
    for src in ("gdrive", "hf:someone/upscale-a-video"):
        with pytest.raises(WeightsError, match=r"not enough free disk space: need .* GiB free; free some space or "
                                               r"choose another folder with --dir$"):
            download(tmp_path / "uav", src, manifests=None)  # the full-size estimate: ~4.8 GB
        assert not staging_dir(tmp_path / "uav").exists()
    full = estimated_bytes(load_manifests(), parts_wanted())
    assert 4.5e9 < full < 5.0e9


def test_a_full_disk_while_copying_names_the_file_and_resumes(source, manifests, tmp_path, monkeypatch):
    import errno
    import io

    real_open = open
    budget = {"bytes": (source / "unet" / "unet_video.bin").stat().st_size // 2}

    class Full(io.FileIO):
        def write(self, b):
            if budget["bytes"] < len(b):
                raise OSError(errno.ENOSPC, "No space left on device")
            budget["bytes"] -= len(b)
            return super().write(b)

    def fake_open(path, mode="r", *a, **kw):
        return Full(path, "a") if mode == "ab" else real_open(path, mode, *a, **kw)

    monkeypatch.setattr(download_module, "open", fake_open, raising=False)  # the module that writes .part files
    dest = tmp_path / "uav"
    with pytest.raises(WeightsError, match=r"\.partial/.*\.part: cannot write \(No space left on device\); free some "
                                           r"space or choose another folder with --dir, then re-run the same command"):
        download(dest, str(source), raft=False, manifests=manifests)
    assert not dest.exists()
    monkeypatch.undo()  # space freed
    download(dest, str(source), raft=False, manifests=manifests)
    assert files_of(dest) == files_of(source)


def test_a_rerun_with_other_options_fetches_only_what_is_missing(source, manifests, tmp_path):
    dest = tmp_path / "uav"
    download(dest, str(source), vae_video=False, raft=False, manifests=manifests)
    convert(dest, manifests=manifests, parts=("unet", "vae_3d", "text_encoder"))
    # Two damaged files at once: both are fetched again in one run, the sound ones are kept.
    (dest / "vae" / "vae_3d.bin").write_bytes(b"garbage")
    (dest / "scheduler" / "scheduler_config.json").write_text("{")
    seen, said = [], []
    download(dest, str(source), raft=False, manifests=manifests, log=said.append,
                     progress=lambda label, done, total: seen.append(label))
    assert set(seen) == {"vae/vae_video.bin", "vae/vae_video_config.json", "vae/vae_3d.bin",
                         "scheduler/scheduler_config.json"}
    assert files_of(dest) == files_of(source)  # the stale .safetensors are not carried over
    assert any("not carried over: text_encoder/model.safetensors" in s and "uav convert" in s for s in said)


def mac_zip(source: Path, path: Path) -> Path:
    """The release as the official Drive folder has held it: upscale_a_video.zip, made on a
    Mac (``__MACOSX/`` resource forks and ``.DS_Store`` files along)."""
    with zipfile.ZipFile(path, "w") as zf:
        for p in sorted(source.rglob("*")):
            if p.is_file():
                rel = p.relative_to(source.parent).as_posix()
                zf.write(p, rel)
                zf.writestr(f"__MACOSX/{rel.rsplit('/', 1)[0]}/._{p.name}", b"\0\5\26\7")
        zf.writestr("upscale_a_video/.DS_Store", b"junk")
    return path


def test_a_drive_folder_holding_the_release_as_one_zip(source, manifests, tmp_path, monkeypatch):
    import gdown

    drive_dir = tmp_path / "drive2" / "upscale_a_video"
    drive_dir.mkdir(parents=True)
    mac_zip(source, drive_dir / "upscale_a_video.zip")
    drive = FakeDrive(drive_dir)
    monkeypatch.setattr(gdown, "download_folder", drive.download_folder)
    monkeypatch.setattr(gdown, "download", drive.download)
    dest = tmp_path / "uav"
    download(dest, "gdrive", raft=False, manifests=manifests)
    assert drive.fetched == ["upscale_a_video.zip"]
    assert files_of(dest) == files_of(source)  # no __MACOSX, ._* or .DS_Store
    assert not downloads_dir(staging_dir(dest)).exists()  # the zip is gone once in place
    load_model(dest)


def test_a_folder_or_archive_holding_the_zip(source, manifests, tmp_path):
    holder = tmp_path / "Downloads"
    holder.mkdir()
    mac_zip(source, holder / "upscale_a_video.zip")
    download(tmp_path / "a", str(holder), raft=False, manifests=manifests)
    assert files_of(tmp_path / "a") == files_of(source)
    # A browser's download of the Drive folder: a zip holding the zip.
    outer = tmp_path / "upscale_a_video-20240101T000000Z-001.zip"
    with zipfile.ZipFile(outer, "w") as zf:
        zf.write(holder / "upscale_a_video.zip", "upscale_a_video/upscale_a_video.zip")
    download(tmp_path / "b", str(outer), raft=False, manifests=manifests)
    assert files_of(tmp_path / "b") == files_of(source)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
