"""How the 4x output is encoded with ffmpeg: the codecs and the ``[encoder]`` settings.

Presets (``[encoder]`` table), the CLI's encoder options, the preset editor and the
generated commands read :class:`EncoderSettings`; :mod:`vs_uav.render` runs the encoder.
The settings are described like the filter's (:class:`vs_uav.settings.Setting`), so every
front end generates its form, options and docs from the same fields. Imports no torch and
no VapourSynth.
"""

from __future__ import annotations

from dataclasses import dataclass

from .settings import Setting, _opt, _settings_of

# ffmpeg arguments per codec: (video encoder arguments, container hint, uses crf)
CODECS: dict[str, tuple[tuple[str, ...], str, bool]] = {
    "x265": (("-c:v", "libx265", "-pix_fmt", "yuv420p10le"), ".mkv", True),
    "x264": (("-c:v", "libx264", "-pix_fmt", "yuv420p"), ".mp4", True),
    "ffv1": (("-c:v", "ffv1", "-level", "3", "-g", "1", "-slicecrc", "1"), ".mkv", False),
    "prores": (("-c:v", "prores_ks", "-profile:v", "3", "-pix_fmt", "yuv422p10le"), ".mov", False),
}


@dataclass
class EncoderSettings:
    """How ``uav upscale`` and generated commands encode the 4x output with ffmpeg."""

    codec: str = _opt("x265", "Video codec: 'x265' (HEVC 10-bit), 'x264', 'ffv1' (lossless) or 'prores' (422 HQ).",
                      choices=tuple(CODECS), group="encoder", label="Video codec")
    crf: int = _opt(18, "Constant rate factor for x265/x264: lower is better and larger.", min=0, max=51,
                    group="encoder", label="Quality (CRF, lower is better)")
    # Not called 'preset': that names a vs-uav preset (--preset); schema-0 preset files migrate.
    speed: str = _opt("medium", "x265/x264 speed preset: slower is smaller at the same quality.",
                      choices=("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                               "veryslow"), group="encoder", label="Encoder speed")
    audio: str = _opt("copy", "Audio from the source: 'copy' (unchanged) or 'none'.", choices=("copy", "none"),
                      group="encoder", label="Audio")

    def __post_init__(self) -> None:
        for spec in ENCODER_SETTINGS:
            setattr(self, spec.name, spec.check(getattr(self, spec.name)))

    def ffmpeg_video_args(self) -> list[str]:
        """The video codec's ffmpeg options, e.g. ``-c:v libx265 -pix_fmt yuv420p10le -crf 18 ...``."""
        args, _, uses_crf = CODECS[self.codec]
        extra = ["-crf", str(self.crf), "-preset", self.speed] if uses_crf else []
        return [*args, *extra]

    @property
    def container(self) -> str:
        """The codec's usual file extension, e.g. ``.mkv``."""
        return CODECS[self.codec][1]


ENCODER_SETTINGS: tuple[Setting, ...] = _settings_of(EncoderSettings)
