"""How the 4x output is encoded with ffmpeg: the codecs and the ``[encoder]`` settings.

Presets (``[encoder]`` table), the CLI's encoder options, the preset editor and the
generated commands read :class:`EncoderSettings`; :mod:`vs_uav.media.render` runs the encoder.
The settings are described like the filter's (:class:`vs_uav.settings.Setting`), so every
front end generates its form, options and docs from the same fields. Imports no torch and
no VapourSynth.
"""

from __future__ import annotations

import functools
import logging
import shutil
import subprocess
from dataclasses import dataclass

from vs_uav.media.probe import VideoFormat
from vs_uav.settings import Setting, setting_field, settings_of

logger = logging.getLogger(__name__)

# ffmpeg arguments per codec: (video encoder arguments, container hint, uses crf)
CODECS: dict[str, tuple[tuple[str, ...], str, bool]] = {
    "x265": (("-c:v", "libx265", "-pix_fmt", "yuv420p10le"), ".mkv", True),
    "x264": (("-c:v", "libx264", "-pix_fmt", "yuv420p"), ".mp4", True),
    "ffv1": (("-c:v", "ffv1", "-level", "3", "-g", "1", "-slicecrc", "1"), ".mkv", False),
    "prores": (("-c:v", "prores_ks", "-profile:v", "3", "-pix_fmt", "yuv422p10le"), ".mov", False),
    # Image sequences (-o out/%07d.tif): one 16-bit RGB file per frame, numbered as the source's frames.
    "tiff": (("-c:v", "tiff", "-pix_fmt", "rgb48le"), ".tif", False),
    "png": (("-c:v", "png", "-pix_fmt", "rgb48be"), ".png", False),
    "dpx": (("-c:v", "dpx", "-pix_fmt", "rgb48le"), ".dpx", False),
}
# The codecs that write an image sequence, and the extensions that name them.
IMAGE_CODECS = ("tiff", "png", "dpx")
IMAGE_SUFFIXES = {".tif": "tiff", ".tiff": "tiff", ".png": "png", ".dpx": "dpx"}
# Rough bits per output pixel, on the generous side, for `uav upscale`'s free-disk check: x265
# and x264 at CRF 18 (each 6 CRF lower doubles it), FFV1 lossless, ProRes 422 HQ (~220 Mb/s at 1080p30).
BITS_PER_PIXEL: dict[str, float] = {"x265": 0.2, "x264": 0.3, "ffv1": 6.0, "prores": 4.0, "tiff": 48.0, "png": 40.0,
                                    "dpx": 48.0}


@dataclass
class EncoderSettings:
    """How ``uav upscale`` and generated commands encode the 4x output with ffmpeg, and where
    the generated script marks scene cuts."""

    codec: str = setting_field("x265", "Video codec: 'x265' (HEVC, 10-bit or more), 'x264', 'ffv1' (lossless) or 'prores' "
                              "(422 HQ; 4444 for 4:4:4). Each keeps the source's format where it can. An image "
                              "sequence output (-o out/%07d.tif, .png, .dpx) is 16-bit RGB 'tiff', 'png' or 'dpx'.",
                      choices=tuple(CODECS), group="encoder", label="Video codec")
    crf: int = setting_field(18, "Constant rate factor for x265/x264: lower is better and larger.", min=0, max=51,
                    group="encoder", label="Quality (CRF, lower is better)")
    # Not called 'preset': that names a vs-uav preset (--preset); schema-0 preset files migrate.
    speed: str = setting_field("medium", "x265/x264 speed preset: slower is smaller at the same quality.",
                      choices=("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                               "veryslow"), group="encoder", label="Encoder speed")
    audio: str = setting_field("copy", "Audio from the source: 'copy' (unchanged) or 'none'.", choices=("copy", "none"),
                      group="encoder", label="Audio")
    # Not filter parameters: the generated script marks cuts before uav.Upscale (vs_uav.vsfilter.scenes).
    scene_cuts: str = setting_field("auto", "Scene cuts, where uav.Upscale carries nothing across: 'auto' detects them "
                                   "(scene_threshold), 'none' marks none, or a text file listing the first frame "
                                   "of each scene (one frame number per line, # comments).",
                           group="encoder", label="Scene cuts")
    scene_threshold: float = setting_field(0.1, "Scene-cut detection: a frame whose mean luma difference to the previous "
                                       "one (0..1, on 64-pixel-wide grey copies) is above this starts a new scene, "
                                       "as does one above a quarter of it that is 4x the motion around it; either "
                                       "way most of the picture (0.65 of its 8x8 blocks, each by over 0.4x this) "
                                       "must have changed.",
                                  min=0.001, max=1.0, group="encoder", label="Scene-cut threshold")

    # Not a filter parameter: the generated script applies it before uav.Upscale (vs_uav.apply_captions).
    captions: str = setting_field("", "Per-scene prompts: a captions file (`uav caption` writes one; one line per "
                                  "scene with its first frame and caption, a blank caption uses --prompt). Each "
                                  "scene is denoised with its caption and the quality tags. Empty: one prompt.",
                         group="encoder", label="Captions file")

    def __post_init__(self) -> None:
        for spec in ENCODER_SETTINGS:
            setattr(self, spec.name, spec.check(getattr(self, spec.name)))
        if not self.scene_cuts.strip():
            raise ValueError(f"scene_cuts={self.scene_cuts!r}; accepted: 'auto', 'none' or a cut file "
                             "(one frame number per line)")

    def ffmpeg_video_args(self, pix_fmt: str = "") -> list[str]:
        """The video codec's ffmpeg options, e.g. ``-c:v libx265 -pix_fmt yuv420p10le -crf 18 ...``;
        ``pix_fmt`` replaces the codec's default (:meth:`encoding_format` chooses it for a source)."""
        args, _, uses_crf = CODECS[self.codec]
        args = list(args)
        if pix_fmt and "-pix_fmt" in args:
            args[args.index("-pix_fmt") + 1] = pix_fmt
        elif pix_fmt:
            args += ["-pix_fmt", pix_fmt]
        if self.codec == "prores" and pix_fmt.startswith("yuv444"):
            args[args.index("-profile:v") + 1] = "4"  # 4444: HQ is a 4:2:2 profile
        extra = ["-crf", str(self.crf), "-preset", self.speed] if uses_crf else []
        return [*args, *extra]

    def encoding_format(self, source: VideoFormat, ffmpeg: str = "ffmpeg") -> tuple[VideoFormat, str, str]:
        """The format the codec encodes ``source`` in: (format, ffmpeg pix_fmt, what changed).

        The source's family, chroma subsampling and bit depth where this ffmpeg's encoder takes
        them (its pixel formats, each choice checked by a one-frame trial encode), at least
        :data:`MIN_BITS`; else the nearest format, with one line saying what changed and why
        (e.g. ``x264: 10-bit 4:2:0 source encoded as 8-bit 4:2:0 (libx264 here has no
        10-bit)``), "" when nothing but a higher bit depth changed.
        """
        encoder = encoder_name(self.codec)
        if self.codec in IMAGE_CODECS:  # one format: 16-bit RGB, what scans and compositors exchange
            pix_fmt = CODECS[self.codec][0][3]
            fmt = VideoFormat("RGB", 16)
            return fmt, pix_fmt, "" if source.family == "RGB" and source.bits <= 16 and not source.float else \
                f"{self.codec}: {source.describe()} source written as {fmt.describe()} (an image sequence is RGB)"
        candidates, listed = [], listed_pixel_formats(encoder, ffmpeg)
        for name in listed:
            fmt = VideoFormat.from_pix_fmt(name)
            if fmt is not None and fmt.pipeable:
                candidates.append((_distance(source, fmt, MIN_BITS.get(self.codec, 8)), name, fmt))
        for _, name, fmt in sorted(candidates):
            if encodes(encoder, name, ffmpeg):
                return fmt, name, _change(self.codec, encoder, source, fmt, source.pix_fmt in listed)
        # No ffmpeg to ask: the codec's default format.
        name = dict(zip(CODECS[self.codec][0][::2], CODECS[self.codec][0][1::2])).get("-pix_fmt", source.pix_fmt)
        fmt = VideoFormat.from_pix_fmt(name) or source
        return fmt, name, _change(self.codec, encoder, source, fmt)

    @property
    def container(self) -> str:
        """The codec's usual file extension, e.g. ``.mkv``."""
        return CODECS[self.codec][1]


ENCODER_SETTINGS: tuple[Setting, ...] = settings_of(EncoderSettings)

# The fewest bits per sample a codec is given: 8-bit sources lose nothing, and x265 compresses
# better at 10 bits; ProRes is 10-bit.
MIN_BITS: dict[str, int] = {"x265": 10, "prores": 10}


def encoder_name(codec: str) -> str:
    """ffmpeg's encoder of a codec: 'x265' -> 'libx265'."""
    args = CODECS[codec][0]
    return args[args.index("-c:v") + 1]


@functools.lru_cache(maxsize=None)
def listed_pixel_formats(encoder: str, ffmpeg: str = "ffmpeg") -> tuple[str, ...]:
    """The pixel formats ``ffmpeg -h encoder=NAME`` lists; () when ffmpeg does not say."""
    exe = shutil.which(ffmpeg)
    if not exe:
        return ()
    try:
        text = subprocess.run([exe, "-hide_banner", "-h", f"encoder={encoder}"], capture_output=True, text=True,
                              timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ()
    for line in text.splitlines():
        if line.strip().startswith("Supported pixel formats:"):
            return tuple(line.split(":", 1)[1].split())
    return ()


@functools.lru_cache(maxsize=None)
def encodes(encoder: str, pix_fmt: str, ffmpeg: str = "ffmpeg") -> bool:
    """Whether ``encoder`` really encodes ``pix_fmt`` here: one 64x64 frame, encoded and discarded
    (a listed format can still fail, e.g. a libx265 built without 12-bit)."""
    exe = shutil.which(ffmpeg)
    if not exe:
        return False
    try:
        run = subprocess.run([exe, "-hide_banner", "-nostdin", "-v", "warning", "-f", "lavfi", "-i",
                              "color=s=64x64:d=1", "-frames:v", "1", "-pix_fmt", pix_fmt, "-c:v", encoder, "-f", "null",
                              "-"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    said = run.stderr.decode(errors="replace")
    # ffmpeg picks another format, with a warning, for one the encoder does not take.
    ok = run.returncode == 0 and "Incompatible pixel format" not in said
    if not ok:
        logger.info("%s cannot encode %s here: %s", encoder, pix_fmt, said[-300:])
    return ok


def _distance(source: VideoFormat, target: VideoFormat, min_bits: int) -> tuple:
    """How far ``target`` is from ``source``, losses first: colour, chroma resolution, bits;
    then, among lossless choices, the least added."""
    if source.family == target.family:
        family = 0
    elif source.family == "GRAY":
        family = 1  # neutral chroma added: nothing lost
    else:
        family = 2 if target.family != "GRAY" else 3
    if source.family == "YUV" and target.family == "YUV":
        lost = max(0, target.ssw - source.ssw) + max(0, target.ssh - source.ssh)
        added = max(0, source.ssw - target.ssw) + max(0, source.ssh - target.ssh)
    elif source.family == "GRAY":
        lost, added = 0, 4 - target.ssw - target.ssh  # the least chroma that is none of the source's
    else:
        lost, added = target.ssw + target.ssh, 0
    bits = 16 if source.float else source.bits
    return (family, lost, max(0, bits - target.bits), max(0, min_bits - target.bits), added,
            abs(target.bits - max(bits, min_bits)), target.pix_fmt == "bgr0")


def _change(codec: str, encoder: str, source: VideoFormat, target: VideoFormat, listed: bool = False) -> str:
    why = []
    if listed and not source.pipeable:
        why.append(f"vspipe's y4m carries no {source.describe()}")
    elif source.family != target.family:
        why.append(f"{encoder} has no {'gray' if source.family == 'GRAY' else source.family}")
    elif (source.ssw, source.ssh) != (target.ssw, target.ssh):
        why.append(f"{encoder} has no {':'.join(source.subsampling)}")
    if source.float:
        why.append(f"{encoder} has no float")
    elif target.bits < source.bits:
        why.append(f"{encoder} here has no {source.bits}-bit")
    return f"{codec}: {source.describe()} source encoded as {target.describe()} ({'; '.join(why)})" if why else ""
