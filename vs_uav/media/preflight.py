"""What ``uav upscale`` checks before vspipe loads the model: whatever can fail cheaply.

With real weights the first chunk takes minutes to hours; a codec the container cannot
hold, an audio track it cannot, an unwritable folder, a full disk or a missing model must
not wait for it. :func:`preflight` runs the checks cheapest first and raises
:class:`PreflightError` with one line naming the option, its value and what is accepted.
It writes nothing that stays: the folders are probed with a file deleted at once, and
the encoder check writes one frame into the caller's temporary folder and deletes it.

Imports no torch and no VapourSynth.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Optional

from vs_uav.errors import UavError
from vs_uav.media.encoder import BITS_PER_PIXEL, EncoderSettings
from vs_uav.media.probe import MediaInfo
from vs_uav.media.output import ffmpeg_options
from vs_uav.media.render import RenderJob, check_encoder
from vs_uav.settings import UpscaleSettings

logger = logging.getLogger(__name__)

SCALE = 4
# Where another container is suggested when the output's cannot hold the codec or the audio.
CONTAINERS = (".mkv", ".mp4", ".mov", ".avi")


class PreflightError(UavError, ValueError):
    """A check that failed; the message is one line without the program's prefix."""


def estimate_output_bytes(info: MediaInfo, encoder: EncoderSettings) -> Optional[int]:
    """A rough, generous size of the 4x output: pixels x frames x the codec's bits per pixel
    (x265/x264 doubling for every 6 CRF below 18), plus the copied audio."""
    if not info.frames:
        return None
    bpp = BITS_PER_PIXEL[encoder.codec]
    if encoder.codec in ("x265", "x264"):
        bpp *= 2 ** ((18 - encoder.crf) / 6)
    pixels = info.width * SCALE * info.height * SCALE
    audio = info.audio_bytes if encoder.audio == "copy" else 0
    return int(pixels * info.frames * bpp / 8) + audio


# The chunk cache (engine.state): per chunk, its final latents (4 channels a frame) and a state of
# the last window context's frames: their latents entering every step, their noised low-res
# frames and the clean last one, as float32 at the low-res size.
_CONTEXT = 7
_LATENT_CHANNELS = 4


def estimate_cache_bytes(info: MediaInfo, settings: UpscaleSettings) -> int:
    """A generous size of the chunk cache a render with ``settings.cache_dir`` fills."""
    if not info.frames or not settings.cache_dir:
        return 0
    chunks = -(-info.frames // settings.chunk_size)
    frames = min(settings.chunk_size, info.frames)
    planes = _LATENT_CHANNELS * (frames + 2) + _CONTEXT * (_LATENT_CHANNELS * (settings.steps + 1) + 3) + 3
    return chunks * (planes * info.width * info.height * 4 + 64 * 1024)  # (+ headers, folders)


def _existing_folder(path: Path) -> Path:
    """The nearest folder of ``path`` (itself or an ancestor) that exists."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_folder(folder: Path, option: str) -> None:
    """PreflightError unless ``folder`` exists and is writable or could be created; creates
    nothing (a probe file in the nearest existing folder is deleted at once)."""
    folder = Path(folder).expanduser()
    base = _existing_folder(folder)
    try:
        if not base.is_dir():
            raise NotADirectoryError(20, f"{base} is a file")
        fd, probe = tempfile.mkstemp(prefix=".uav-write-test-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        why = e.strerror or str(e)
        if isinstance(e, NotADirectoryError) and base != folder:
            why = f"{base} is a file"
        raise PreflightError(f"{option} {folder} is not writable ({why}); accepted: a folder this user can "
                             "create and write") from None


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def check_disk_space(output: Path, info: MediaInfo, encoder: EncoderSettings,
                     settings: Optional[UpscaleSettings] = None) -> None:
    """PreflightError when the output folder's filesystem has less free space than the
    estimated output (:func:`estimate_output_bytes`) and, with ``settings``, the chunk cache
    (:func:`estimate_cache_bytes`; where it is on the same filesystem, the two together)."""
    need = estimate_output_bytes(info, encoder)
    if need is None:
        logger.info("preflight: the source does not say its frame count; free disk not checked")
        return
    base = _existing_folder(Path(output).parent)
    cache = estimate_cache_bytes(info, settings) if settings is not None else 0
    cache_base = _existing_folder(Path(settings.cache_dir)) if cache and settings is not None else base
    same = os.stat(cache_base).st_dev == os.stat(base).st_dev
    free = shutil.disk_usage(base).free
    if need + (cache if same else 0) > free:
        also = " with its chunk cache" if cache and same else ""
        raise PreflightError(
            f"--output {output}: needs about {_gib(need + (cache if same else 0))}{also} ({info.frames} frames of "
            f"{info.width * SCALE}x{info.height * SCALE} {encoder.codec}) but {base} has {_gib(free)} free; accepted: a folder "
            f"with enough free space (or a smaller --codec/higher --crf{', --no-resume' if also else ''})")
    if cache and not same and cache > shutil.disk_usage(cache_base).free:
        raise PreflightError(f"--cache-dir {settings.cache_dir}: the chunk cache needs about {_gib(cache)} but "
                             f"{cache_base} has {_gib(shutil.disk_usage(cache_base).free)} free; accepted: a folder "
                             "with enough free space")


def check_encoding(job: RenderJob, source: Path, info: Optional[MediaInfo], encoder: EncoderSettings,
                   folder: Path) -> None:
    """PreflightError when ffmpeg cannot write the output's container with these codec options
    and the source's audio (a one-frame test encode, :func:`vs_uav.media.render.check_encoder`),
    saying whether the codec or the audio is the problem and which containers would work."""
    error = check_encoder(job, folder)
    if not error:
        return
    ext = Path(job.output).suffix or "(no extension)"

    def works(args: list[str], suffix: str) -> bool:
        trial = replace(job, output=Path(job.output).with_suffix(suffix), ffmpeg_args=args)
        return not check_encoder(trial, folder)

    silent = ffmpeg_options(source, replace(encoder, audio="none"))
    has_audio = encoder.audio == "copy" and (info is None or info.audio is not None)
    if has_audio and works(silent, job.output.suffix):
        others = [c for c in CONTAINERS if c != ext and works(list(job.ffmpeg_args), c)]
        audio = f"the source's {info.audio} audio" if info is not None else "the source's audio"
        raise PreflightError(f"--audio copy: {audio} cannot be written to {ext} (ffmpeg: {error}); accepted: "
                             f"--audio none{', or an output ending ' + ', '.join(others) if others else ''}")
    others = [c for c in CONTAINERS if c != ext and works(list(job.ffmpeg_args), c)]
    if others:
        raise PreflightError(f"--codec {encoder.codec} cannot be written to {ext} (ffmpeg: {error}); accepted: "
                             f"{', '.join(others)}")
    raise PreflightError(f"--codec {encoder.codec}: this ffmpeg cannot write it (ffmpeg: {error}); accepted: "
                         "another --codec (`uav doctor` lists the encoders this ffmpeg has)")


def preflight(job: RenderJob, source: Path, media: Optional[MediaInfo], settings: UpscaleSettings,
              encoder: EncoderSettings, folder: Path) -> None:
    """Every check that is cheap next to the first chunk, cheapest first: the model folder
    and the model's limits, the output and cache folders, free disk, the encoder. ``media``:
    the job's probe of ``source`` (None: free disk is not checked). ``folder``: a temporary
    folder for the encoder's test file."""
    from vs_uav.weights.folder import ModelLoadError, check_folder, default_model_dir, max_noise_level

    model = Path(settings.model).expanduser() if settings.model else default_model_dir()
    try:
        check_folder(model, settings.vae)
        settings.check_model(max_noise_level(model))
    except ModelLoadError as e:
        raise PreflightError(f"--model {e}" if settings.model else str(e)) from None
    output = Path(job.output)
    if output.is_dir():
        raise PreflightError(f"--output {output} is a folder; accepted: a file name, e.g. {output / 'out.mkv'}")
    check_writable_folder(output.parent, "--output")
    if settings.cache_dir:
        check_writable_folder(Path(settings.cache_dir), "--cache-dir")
    if media is not None:
        check_disk_space(output, media, encoder, settings)
    check_encoding(job, source, media, encoder, folder)
