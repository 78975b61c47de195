"""Captioning a source, scene by scene: what ``uav caption``, ``uav upscale --prompt auto`` and
the preset editor's Captions view run.

1. The captioner is checked (its name, its folder's files) before anything is read or loaded.
2. The clip is read as the render's script reads it, and cut where the script cuts it.
3. Each scene's picture is captioned (:func:`vs_uav.media.captions.caption_scenes`): from
   the cache, or by the captioner, loaded once, used for every scene and freed at the end.
4. The captions file is written (atomically); the render's script applies it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from vs_uav.errors import UavError

logger = logging.getLogger(__name__)

AUTO_PROMPT = "auto"  # --prompt auto: caption every scene, then render with the captions


class CaptionJobError(UavError, RuntimeError):
    """One line: what cannot be captioned and why."""


@dataclass(frozen=True)
class CaptionJob:
    """Caption ``source``'s scenes into ``output`` (a captions file)."""

    source: Path
    output: Path
    captioner: str = "florence-2"
    folder: Optional[Path] = None  # the captioner's folder; None: where `uav download --captioner` puts it
    scene_cuts: str = "auto"
    scene_threshold: float = 0.1
    prepare: tuple[str, ...] = ()  # the render's script lines between reading and upscaling
    device: str = "auto"
    bits: str = "none"  # 8bit / 4bit: bitsandbytes on CUDA
    max_memory: float = 0.0  # GiB the captioner may take (the render's --max-memory); 0: no budget
    cache: bool = True


@dataclass(frozen=True)
class CaptionResult:
    path: Path
    scenes: int
    captioned: int  # by the captioner; the others came from the cache
    seconds: float

    @property
    def summary(self) -> str:
        cached = self.scenes - self.captioned
        return (f"{self.scenes} scene{'s' if self.scenes != 1 else ''} captioned into {self.path} "
                f"({cached} from the cache) in {self.seconds:.1f} s")


def default_captions_path(output: Path) -> Path:
    """The captions file next to a render's output (or a source): ``out.mkv`` ->
    ``out.captions.tsv``; for an image sequence ``out/%07d.tif``, ``out/captions.tsv``."""
    if "%" in output.name:
        return output.parent / "captions.tsv"
    return output.with_name(f"{output.stem}.captions.tsv")


def captioner_folder(job: CaptionJob) -> Path:
    """Step 1: the captioner's folder, checked (files present, the right architecture)."""
    from vs_uav.weights.captioners import captioner_dir, check_captioner_folder, check_captioner_name
    from vs_uav.weights.folder import WeightsError

    try:
        spec = check_captioner_name(job.captioner)
        return check_captioner_folder(job.folder or captioner_dir(job.captioner), spec)
    except (ValueError, WeightsError) as e:
        raise CaptionJobError(str(e)) from None


def run_captions(job: CaptionJob, progress: Optional[Callable[[int, int], None]] = None,
                 stop: Optional[threading.Event] = None) -> CaptionResult:
    """Steps 1-4; CaptionJobError in one line. ``stop`` cancels between scenes
    (:class:`vs_uav.media.captions.Cancelled`; nothing is written then, the scenes captioned so
    far stay in the cache)."""
    from vs_uav.engine.captioner import captioner_identity, load_captioner
    from vs_uav.media.captions import CaptionCache, Cancelled, caption_cache_dir, caption_scenes, write_captions
    from vs_uav.media.timecode import shift_timecode

    started = time.monotonic()
    folder = captioner_folder(job)  # 1.
    check_captioner_budget(job, folder)
    check_output(job.output)
    clip, media = read_clip(job.source, job.prepare)  # 2.
    cuts = scene_starts(clip, job.scene_cuts, job.scene_threshold)
    fps = media.fps
    start = media.timecode or "00:00:00:00"
    identity = captioner_identity(job.captioner, folder) or job.captioner
    cache = CaptionCache(caption_cache_dir() if job.cache else None, identity)

    def load():
        return load_captioner(job.captioner, folder, job.device, job.bits, job.max_memory)

    try:  # 3.
        scenes = caption_scenes(clip, cuts, load, cache, lambda n: shift_timecode(start, n, fps), progress, stop)
    except Cancelled:
        raise
    except (ValueError, RuntimeError) as e:
        raise CaptionJobError(f"{job.source}: {e}") from None
    note = f"source: {job.source}\ncaptioner: {job.captioner} ({folder})"
    try:
        write_captions(job.output, scenes, note)  # 4.
    except OSError as e:
        raise CaptionJobError(f"{job.output}: cannot be written ({e.strerror or e})") from None
    return CaptionResult(job.output, len(scenes), cache.misses, time.monotonic() - started)


def check_output(path: Path) -> None:
    """The captions file's folder exists and can be written: said before any scene is captioned."""
    import os

    folder = path.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise CaptionJobError(f"-o {path}: the folder {folder} {'cannot be written' if folder.is_dir() else 'is missing'}; "
                              "accepted: a file in a folder this user can write")


def check_captioner_budget(job: CaptionJob, folder: Path) -> None:
    """Step 1 too: the --captioner-bits and --max-memory asked for fit the captioner and the device
    (bitsandbytes on CUDA; its weights within the budget), before anything is read."""
    import torch

    from vs_uav.engine.captioner import captioner_device, check_budget, quantization_args

    where = captioner_device(job.device)
    try:
        quantization_args(job.bits, where)
        check_budget(job.captioner, folder, torch.float16 if where.type == "cuda" else torch.float32, job.bits,
                     job.max_memory)
    except ValueError as e:
        raise CaptionJobError(str(e)) from None


def read_clip(source: Path, prepare: tuple[str, ...] = ()):
    """(the clip the render's script hands the filter, its MediaInfo); CaptionJobError in one line."""
    from vs_uav.media.probe import probe
    from vs_uav.media.script import reading_script

    reading = reading_script(source, prepare)
    try:
        media = probe(source, reading)
    except ValueError as e:
        raise CaptionJobError(str(e)) from None
    namespace: dict = {"__name__": "__vapoursynth__"}
    exec(compile(reading, f"<reading {source}>", "exec"), namespace)
    return namespace["clip"], media


def scene_starts(clip, scene_cuts: str, threshold: float) -> list[int]:
    """The scenes' first frames as the render's script marks them (0 included)."""
    from vs_uav.vsfilter.scenes import SceneError, cuts_of

    try:
        return [0, *cuts_of(clip, scene_cuts, threshold)]
    except SceneError as e:
        raise CaptionJobError(str(e)) from None


def check_captions(path: Path, clip, scene_cuts: str, threshold: float) -> int:
    """A captions file a render uses, checked against the clip's scenes before the model loads;
    the number of scenes it captions. CaptionJobError naming the file and line."""
    from vs_uav.media.captions import CaptionsError, read_captions

    try:
        return len(read_captions(path, clip.num_frames, scene_starts(clip, scene_cuts, threshold)))
    except CaptionsError as e:
        raise CaptionJobError(str(e)) from None
