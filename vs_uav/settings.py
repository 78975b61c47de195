"""The one settings model of ``uav.Upscale``: name, type, default, range, choices, help.

Validation, the VapourSynth signature of the native plugin, presets, the GUI form, the
CLI options and the parameter docs are all generated from :class:`UpscaleSettings`.
This module must not import torch (the GUI and the plugin build read it).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Iterator, Optional

PROMPT_SUFFIX = "best quality, extremely detailed"
NEGATIVE_PROMPT = "blur, worst quality"


def _opt(default: Any, help: str, *, min: Optional[float] = None, max: Optional[float] = None,
         choices: Optional[tuple[str, ...]] = None, group: str = "diffusion") -> Any:
    meta = {"help": help, "min": min, "max": max, "choices": choices, "group": group}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class UpscaleSettings:
    """Every parameter of ``core.uav.Upscale`` (and ``vs_uav.upscale``), with its default."""

    prompt: str = _opt("", "What the video shows, e.g. 'a koala in a tree'. Guides the generated texture.",
                       group="prompt")
    prompt_suffix: str = _opt(PROMPT_SUFFIX, "Appended to the prompt (the official quality tags).", group="prompt")
    negative_prompt: str = _opt(NEGATIVE_PROMPT, "What to steer away from (used when guidance_scale > 1).",
                                group="prompt")
    model: str = _opt("", "Model folder (official upscale_a_video layout). Empty: $UAV_MODEL_DIR, then the "
                          "user data folder where `uav download` puts it.", group="model")
    vae: str = _opt("3d", "Decoder: '3d' (default VAE) or 'video' (low-res conditioned, temporal; more "
                          "faithful, slower).", choices=("3d", "video"), group="model")
    steps: int = _opt(30, "Denoising steps. More adds detail and time (official: 20-30).", min=1, max=1000)
    guidance_scale: float = _opt(6.0, "Classifier-free guidance: how strongly the prompt steers (official: "
                                      "5-9). <= 1 turns it off and halves the cost.", min=0.0, max=50.0)
    noise_level: int = _opt(120, "Noise added to the input: higher trades fidelity for generated detail "
                                 "(official: 100-150).", min=0, max=350)
    propagation_steps: list = _opt([], "Step indices (0-based) at which latents are propagated along optical "
                                       "flow for long-range consistency, e.g. 24,26,28 of 30.", min=0, max=999)
    flow: str = _opt("auto", "Optical flow for propagation: 'raft' (official weights), 'dis' (OpenCV, no "
                             "weights) or 'auto' (RAFT when present).", choices=("auto", "raft", "dis"),
                     group="model")
    color_fix: str = _opt("none", "Colour correction against the input: 'none', 'adain' or 'wavelet'.",
                          choices=("none", "adain", "wavelet"))
    w_lr: float = _opt(1.0, "Weight of the low-res frames in the 'video' VAE (1.0 official; 0 ignores them).",
                       min=0.0, max=2.0)
    seed: int = _opt(0, "Random seed. Draws depend on (seed, frame), so results are reproducible and "
                        "independent of chunking.", min=0, max=2**63 - 1)
    chunk_size: int = _opt(32, "Frames denoised together; memory grows with it, not with clip length.",
                           min=8, max=4096, group="memory")
    tile_size: int = _opt(0, "Spatial tile in low-res pixels (multiple of 8); 0 tiles only when memory "
                             "requires it.", min=0, max=4096, group="memory")
    tile_overlap: int = _opt(16, "Overlap of neighbouring tiles in low-res pixels, blended smoothly.",
                             min=0, max=2048, group="memory")
    device: str = _opt("auto", "'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'.", group="device")
    dtype: str = _opt("auto", "U-Net precision: 'auto' (float16 on CUDA, float32 on CPU), 'float32', "
                              "'float16', 'bfloat16'. The VAE always decodes in float32.",
                      choices=("auto", "float32", "float16", "bfloat16"), group="device")
    cache_dir: str = _opt("", "Folder for finished chunks and boundary states: a killed render resumes "
                              "where it stopped. Empty: no disk cache.", group="memory")
    scene_change: bool = _opt(True, "Start fresh at frames with _SceneChangePrev set: nothing is carried "
                                    "across a cut.", group="memory")
    seek: str = _opt("exact", "'exact': a far request first computes the chunks before it (identical "
                              "frames); 'fast': cold start at the requested chunk.",
                     choices=("exact", "fast"), group="memory")

    def __post_init__(self) -> None:
        for spec in SETTINGS:
            setattr(self, spec.name, spec.check(getattr(self, spec.name)))
        if self.tile_size and (self.tile_size < 32 or self.tile_size % 8):
            raise ValueError(f"tile_size={self.tile_size}; accepted: 0 (automatic) or a multiple of 8 >= 32")
        if self.tile_size and self.tile_overlap > self.tile_size // 2:
            raise ValueError(f"tile_overlap={self.tile_overlap}; accepted: 0..{self.tile_size // 2} "
                             f"(half of tile_size={self.tile_size})")
        bad = [s for s in self.propagation_steps if s >= self.steps]
        if bad:
            raise ValueError(f"propagation_steps={self.propagation_steps}; accepted: step indices in "
                             f"[0, {self.steps - 1}] (steps={self.steps})")
        if not (self.device in ("auto", "cpu", "cuda") or
                (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            raise ValueError(f"device={self.device!r}; accepted: 'auto', 'cpu', 'cuda' or 'cuda:N'")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "UpscaleSettings":
        """Settings from keyword arguments; an unknown name is refused with the valid ones."""
        names = [s.name for s in SETTINGS]
        unknown = [k for k in kwargs if k not in names]
        if unknown:
            raise ValueError(f"unknown parameter {unknown[0]!r}; accepted: {', '.join(names)}")
        return cls(**kwargs)

    def non_defaults(self) -> dict[str, Any]:
        return {s.name: getattr(self, s.name) for s in SETTINGS if getattr(self, s.name) != s.default}

    @property
    def full_prompt(self) -> str:
        """The official prompt: caption and suffix, plainly concatenated (with a separator)."""
        if self.prompt and self.prompt_suffix and not self.prompt.rstrip().endswith(","):
            return f"{self.prompt.rstrip()}, {self.prompt_suffix}"
        return f"{self.prompt}{self.prompt_suffix}"


@dataclass(frozen=True)
class Setting:
    """One parameter as every front end sees it."""

    name: str
    type: type
    default: Any
    help: str
    min: Optional[float]
    max: Optional[float]
    choices: Optional[tuple[str, ...]]
    group: str

    @property
    def vs_type(self) -> str:
        return {int: "int", float: "float", str: "data", bool: "int", list: "int[]"}[self.type]

    def describe_accepted(self) -> str:
        if self.choices:
            return ", ".join(repr(c) for c in self.choices)
        kind = {int: "an integer", float: "a number", str: "a string", bool: "True or False",
                list: "a list of integers"}[self.type]
        if self.min is not None and self.max is not None:
            return f"{kind} in [{_fmt(self.min)}, {_fmt(self.max)}]"
        return kind

    def check(self, value: Any) -> Any:
        """The value, normalised (e.g. bytes -> str, int -> float), or ValueError."""
        def bad() -> ValueError:
            return ValueError(f"{self.name}={value!r}; accepted: {self.describe_accepted()}")

        if self.type is str:
            if isinstance(value, bytes):
                value = value.decode("utf-8")
            if not isinstance(value, str):
                raise bad()
            if self.choices and value not in self.choices:
                raise bad()
            return value
        if self.type is bool:
            if isinstance(value, bool) or value in (0, 1):
                return bool(value)
            raise bad()
        if self.type is list:
            if isinstance(value, int) and not isinstance(value, bool):
                value = [value]
            if not isinstance(value, (list, tuple)) or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise bad()
            if any(not self.min <= v <= self.max for v in value) or len(set(value)) != len(value):
                raise bad()
            return sorted(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        if self.type is int:
            if isinstance(value, float):
                if not value.is_integer():
                    raise bad()
                value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise bad()
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            raise bad()
        return value


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


SETTINGS: tuple[Setting, ...] = ()  # filled below, once Setting exists

VS_RETURN = "clip:vnode;"


def vs_signature() -> str:
    """The argument string the native plugin registers ``uav.Upscale`` with."""
    # Arrays are declared ":empty" so that an empty list (no propagation) is a valid argument.
    return "clip:vnode;" + "".join(
        f"{s.name}:{s.vs_type}:opt{':empty' if s.type is list else ''};" for s in SETTINGS)


def iter_settings(group: Optional[str] = None) -> Iterator[Setting]:
    return (s for s in SETTINGS if group is None or s.group == group)


# -- the encoder -----------------------------------------------------------------------------

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
                      choices=tuple(CODECS), group="encoder")
    crf: int = _opt(18, "Constant rate factor for x265/x264: lower is better and larger.", min=0, max=51,
                    group="encoder")
    # Not called 'preset': that names a vs-uav preset (--preset); schema-0 preset files migrate.
    speed: str = _opt("medium", "x265/x264 speed preset: slower is smaller at the same quality.", choices=("ultrafast", "superfast", "veryfast", "faster",
                       "fast", "medium", "slow", "slower", "veryslow"), group="encoder")
    audio: str = _opt("copy", "Audio from the source: 'copy' (unchanged) or 'none'.", choices=("copy", "none"),
                      group="encoder")

    def __post_init__(self) -> None:
        for spec in ENCODER_SETTINGS:
            setattr(self, spec.name, spec.check(getattr(self, spec.name)))

    def ffmpeg_video_args(self) -> list[str]:
        args, _, uses_crf = CODECS[self.codec]
        extra = ["-crf", str(self.crf), "-preset", self.speed] if uses_crf else []
        return [*args, *extra]


def _settings_of(cls) -> tuple[Setting, ...]:
    types = {"str": str, "int": int, "float": float, "bool": bool, "list": list}
    out = []
    for f in fields(cls):
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        m = f.metadata
        out.append(Setting(f.name, types[f.type] if isinstance(f.type, str) else f.type, default, m["help"],
                           m["min"], m["max"], m["choices"], m["group"]))
    return tuple(out)


ENCODER_SETTINGS: tuple[Setting, ...] = _settings_of(EncoderSettings)
SETTINGS = _settings_of(UpscaleSettings)
SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}
