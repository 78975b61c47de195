"""The one settings model of ``uav.Upscale``: name, type, default, range, choices, help.

Validation, the VapourSynth signature of the native plugin, presets, the GUI form, the
CLI options and the parameter docs are all generated from :class:`UpscaleSettings`.
This module must not import torch (the GUI and the plugin build read it).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from dataclasses import replace as _replace_field
from typing import Any, Optional

from vs_uav.untrusted import ascii_float, ascii_int, is_ascii_digits

PROMPT_SUFFIX = "best quality, extremely detailed"
NEGATIVE_PROMPT = "blur, worst quality"


def setting_field(default: Any, help: str, *, min: Optional[float] = None, max: Optional[float] = None,
         choices: Optional[tuple[str, ...]] = None, group: str = "diffusion", output: bool = True,
         label: str = "") -> Any:
    """A setting's field. ``output=False``: the setting never changes the frames (where to
    cache, which device, seek policy), so cached chunks stay valid when it changes.
    ``label``: what the preset editor calls it, in words (e.g. "Low-res weight (video VAE)")."""
    meta = {"help": help, "min": min, "max": max, "choices": choices, "group": group, "output": output,
            "label": label}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class UpscaleSettings:
    """Every parameter of ``core.uav.Upscale`` (and ``vs_uav.upscale``), with its default."""

    prompt: str = setting_field("", "What the video shows, e.g. 'a koala in a tree'. Guides the generated texture.",
                       group="prompt", label="Prompt")
    prompt_suffix: str = setting_field(PROMPT_SUFFIX, "Appended to the prompt (the official quality tags).", group="prompt",
                              label="Quality tags")
    negative_prompt: str = setting_field(NEGATIVE_PROMPT, "What to steer away from (used when guidance_scale > 1).",
                                group="prompt", label="Negative prompt")
    # The model's identity enters cache fingerprints by its resolved folder, not by this string.
    model: str = setting_field("", "Model folder (official upscale_a_video layout). Empty: $UAV_MODEL_DIR, then the "
                          "user data folder where `uav download` puts it.", group="model", output=False,
                      label="Model folder")
    vae: str = setting_field("3d", "Decoder: '3d' (default VAE) or 'video' (low-res conditioned, temporal; more "
                          "faithful, slower).", choices=("3d", "video"), group="model", label="Decoder (VAE)")
    steps: int = setting_field(30, "Denoising steps. More adds detail and time (official: 20-30).", min=1, max=1000,
                      label="Denoising steps")
    guidance_scale: float = setting_field(6.0, "Classifier-free guidance: how strongly the prompt steers (official: "
                                      "5-9). <= 1 turns it off and halves the cost.", min=0.0, max=50.0,
                                 label="Prompt strength (guidance)")
    noise_level: int = setting_field(120, "Noise added to the input: higher trades fidelity for generated detail "
                                 "(official: 100-150).", min=0, max=350, label="Input noise (fidelity vs. detail)")
    propagation_steps: list = setting_field([], "Step indices (0-based) at which latents are propagated along optical "
                                       "flow for long-range consistency, e.g. 24,26,28 of 30.", min=0, max=999,
                                   label="Flow propagation at steps")
    flow: str = setting_field("auto", "Optical flow for propagation: 'raft' (official weights), 'dis' (OpenCV, no "
                             "weights) or 'auto' (RAFT when present).", choices=("auto", "raft", "dis"),
                     group="model", label="Optical flow")
    color_fix: str = setting_field("none", "Colour correction against the input: 'none', 'adain' or 'wavelet'.",
                          choices=("none", "adain", "wavelet"), label="Colour correction")
    w_lr: float = setting_field(1.0, "Weight of the low-res frames in the 'video' VAE (1.0 official; 0 ignores them).",
                       min=0.0, max=2.0, label="Low-res weight (video VAE)")
    seed: int = setting_field(0, "Random seed. Each frame's draws depend on (seed, frame index) only, so results are "
                        "reproducible in any order, on any machine.", min=0, max=2**63 - 1, label="Random seed")
    chunk_size: int = setting_field(32, "Frames denoised together; memory grows with it, not with clip length.",
                           min=8, max=4096, group="memory", label="Frames per chunk")
    lookahead: int = setting_field(8, "Frames past each chunk's end denoised and discarded, so the frames before "
                             "a chunk boundary see what follows, as in one long chunk. 0: none (faster); "
                             "chunking is exact when >= 7 x steps + 3 and propagation_steps is empty.",
                          min=0, max=1024, group="memory", label="Look-ahead frames")
    tile_size: int = setting_field(0, "Spatial tile in low-res pixels (multiple of 8); 0 tiles only when memory "
                             "requires it.", min=0, max=4096, group="memory", label="Tile size (low-res pixels)")
    tile_overlap: int = setting_field(16, "Overlap of neighbouring tiles in low-res pixels, blended smoothly.",
                             min=0, max=2048, group="memory", label="Tile overlap (low-res pixels)")
    cache_interval: int = setting_field(1, "Step caching (DeepCache): the U-Net's deep blocks are recomputed every N "
                                  "steps and reused in between, the shallow ones every step. 1: exact (default); "
                                  "3: about twice as fast, approximate.", min=1, max=10,
                               label="Step caching interval")
    max_memory: float = setting_field(0.0, "Device memory budget in GiB: tiles and windows run at once are chosen to fit "
                                  "it, and a chunk that runs out of memory is retried with smaller tiles. 0: what "
                                  "the device has free (CPU: half the free RAM).", min=0.0, max=65536.0,
                             group="memory", output=False, label="Memory budget (GiB, 0: free)")
    device: str = setting_field("auto", "'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'.", group="device",
                       output=False, label="Device")
    dtype: str = setting_field("auto", "U-Net precision: 'auto' (float16 on CUDA, float32 on CPU), 'float32', "
                              "'float16', 'bfloat16'. The VAE always decodes in float32.",
                      choices=("auto", "float32", "float16", "bfloat16"), group="device", label="U-Net precision")
    weights: str = setting_field("default", "U-Net weight storage: 'default' (in the U-Net precision) or 'fp8' (float8, "
                                   "about half the memory of bfloat16; computes in the U-Net precision, small "
                                   "deviation).", choices=("default", "fp8"), group="device",
                        label="U-Net weight storage")
    offload: bool = setting_field(False, "Keep the U-Net's blocks in host memory and move each to the GPU when it runs: "
                                "fits a small GPU, slower. No effect on the CPU.", group="device", output=False,
                         label="Offload U-Net blocks to host memory")
    compile: bool = setting_field(False, "Compile the U-Net's repeated blocks with torch.compile: faster after a slower "
                                "first chunk (compiled code is cached between runs); same numbers within "
                                "rounding.", group="device", output=False, label="Compile the U-Net")
    cache_dir: str = setting_field("", "Folder for finished chunks and boundary states: a killed render resumes "
                              "where it stopped. Empty: no disk cache.", group="memory", output=False,
                          label="Chunk cache folder")
    scene_change: bool = setting_field(True, "Start fresh at frames with _SceneChangePrev set: nothing is carried "
                                    "across a cut.", group="memory", label="Start fresh at scene cuts")
    seek: str = setting_field("exact", "'exact': a far request first computes the chunks before it (identical "
                              "frames); 'fast': cold start at the requested chunk.",
                     choices=("exact", "fast"), group="memory", output=False, label="Far seeks")

    def __post_init__(self) -> None:
        for spec in SETTINGS:
            value = getattr(self, spec.name)
            if spec.name == "propagation_steps" and isinstance(self.steps, int):  # steps is checked by now
                try:  # indices of this run's steps
                    value = _replace_field(spec, max=min(spec.max, self.steps - 1)).check(value)
                except ValueError:
                    raise ValueError(f"propagation_steps={value!r}; accepted: distinct step indices in "
                                     f"[0, {self.steps - 1}] (steps={self.steps})") from None
            setattr(self, spec.name, spec.check(value))
        if self.tile_size and (self.tile_size < 32 or self.tile_size % 8):
            raise ValueError(f"tile_size={self.tile_size}; accepted: 0 (automatic) or a multiple of 8 >= 32")
        if self.tile_size and self.tile_overlap > self.tile_size // 2:
            raise ValueError(f"tile_overlap={self.tile_overlap}; accepted: 0..{self.tile_size // 2} "
                             f"(half of tile_size={self.tile_size})")
        if not (self.device in ("auto", "cpu", "cuda") or
                (self.device.startswith("cuda:") and is_ascii_digits(self.device[5:]))):
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

    def output_values(self) -> dict[str, Any]:
        """The settings that shape the frames: what a cache fingerprint must cover."""
        return {s.name: getattr(self, s.name) for s in SETTINGS if s.affects_output}

    def replace(self, **changes: Any) -> "UpscaleSettings":
        """A copy with ``changes`` applied and validated like any other settings."""
        return UpscaleSettings.from_kwargs(**{**{s.name: getattr(self, s.name) for s in SETTINGS}, **changes})

    def check_model(self, max_noise_level: int, max_steps: int = 999) -> None:
        """The limits a loaded model sets: ``max_noise_level`` (its ``model_index.json``) and
        ``max_steps`` (its scheduler's training timesteps less its ``steps_offset``)."""
        if self.noise_level > max_noise_level:
            raise ValueError(f"noise_level={self.noise_level}; accepted: an integer in [0, {max_noise_level}] "
                             "for this model")
        if self.steps > max_steps:
            raise ValueError(f"steps={self.steps}; accepted: an integer in [1, {max_steps}] for this model")

    @property
    def guidance(self) -> bool:
        """Classifier-free guidance runs (a negative and a positive row) above 1."""
        return self.guidance_scale > 1.0

    @property
    def full_prompt(self) -> str:
        """The official prompt: caption and suffix, plainly concatenated (with a separator)."""
        return self.join_prompt(self.prompt, self.prompt_suffix)

    @staticmethod
    def join_prompt(caption: str, suffix: str) -> str:
        """The one joining rule: ``caption, suffix`` (no second comma when the caption ends
        with one). The text encoder joins a shortened caption by it too."""
        if caption and suffix and not caption.rstrip().endswith(","):
            return f"{caption.rstrip()}, {suffix}"
        return f"{caption}{suffix}"


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
    affects_output: bool = True
    label: str = ""  # in words, for the preset editor's form

    @property
    def vs_type(self) -> str:
        """How the native plugin declares it. VapourSynth converts every argument to its
        declared type before Python sees it: ``int`` would truncate ``steps=2.7`` to 2 and
        fail on ``seed=2**63`` with a bare OverflowError. So integers (and booleans) travel
        as ``float``, exact far beyond their ranges, and an integer whose range a float
        cannot hold exactly (``seed``) as ``data``: VapourSynth passes ``str(value)``. Python
        gets them back with :meth:`from_vs`, and :meth:`check` refuses what is not an integer."""
        if self.type in (str, float):
            return "data" if self.type is str else "float"
        wide = self.max is not None and abs(self.max) > _EXACT_IN_FLOAT
        return ("data" if wide else "float") + ("[]" if self.type is list else "")

    def from_vs(self, value: Any) -> Any:
        """A value as the plugin passes it (see :attr:`vs_type`) back in this setting's terms:
        a whole float becomes an int, the decimal text of a ``data`` integer its number;
        anything else is returned as it came, for :meth:`check` to refuse by its value."""
        if self.type in (str, float):
            return value
        if self.type is list or isinstance(value, list):  # VapourSynth passes a one-value array bare
            return [self._from_vs_item(v) for v in (value if isinstance(value, list) else [value])]
        return self._from_vs_item(value)

    def _from_vs_item(self, value: Any) -> Any:
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str) and self.vs_type.startswith("data"):
            text = value.strip()
            if text in ("True", "False"):  # str(True): a bool is not an integer here
                return text == "True"
            try:
                return int(text)
            except ValueError:
                try:
                    value = float(text)
                except ValueError:
                    return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
            return int(value)
        return value

    def describe_accepted(self) -> str:
        if self.choices:
            return ", ".join(repr(c) for c in self.choices)
        kind = {int: "an integer", float: "a number", str: "a string", bool: "True or False",
                list: "distinct integers"}[self.type]
        if self.min is not None and self.max is not None:
            return f"{kind} in [{_fmt(self.min)}, {_fmt(self.max)}]"
        return kind

    def parse(self, text: str) -> Any:
        """The value written in ``text`` (a command-line option, a form field), not yet range
        checked (:meth:`check` does that); ValueError saying what is accepted. Integers
        refuse ``2.5``; lists are integers separated by commas (empty: none)."""
        try:
            if self.type is list:
                return [ascii_int(v) for v in text.replace(" ", "").split(",") if v]
            if self.type is int:
                return ascii_int(text)
            if self.type is float:
                return ascii_float(text)
        except ValueError:
            accepted = ("integers separated by commas, e.g. 24,26,28" if self.type is list
                        else self.describe_accepted())
            raise ValueError(f"accepted: {accepted}") from None
        if self.type is bool:
            if text.strip().lower() in ("true", "1", "yes", "false", "0", "no"):
                return text.strip().lower() in ("true", "1", "yes")
            raise ValueError(f"accepted: {self.describe_accepted()}")
        return text

    def check(self, value: Any) -> Any:
        """The value, normalised (e.g. bytes -> str, int -> float), or ValueError naming the
        setting, the value as given and what is accepted."""
        given = value

        def bad() -> ValueError:
            return ValueError(f"{self.name}={given!r}; accepted: {self.describe_accepted()}")

        if self.type is str:
            if isinstance(value, bytes):
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError:
                    raise bad() from None
            if not isinstance(value, str):
                raise bad()
            if self.choices and value not in self.choices:
                raise bad()
            return value
        if self.type is bool:
            if isinstance(value, bool) or (isinstance(value, (int, float)) and value in (0, 1)):
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
_EXACT_IN_FLOAT = 2**53  # every integer up to this is a float exactly

VS_RETURN = "clip:vnode;"


def vs_signature() -> str:
    """The argument string the native plugin registers ``uav.Upscale`` with."""
    # Arrays are declared ":empty" so that an empty list (no propagation) is a valid argument.
    return "clip:vnode;" + "".join(
        f"{s.name}:{s.vs_type}:opt{':empty' if s.type is list else ''};" for s in SETTINGS)


def settings_of(cls) -> tuple[Setting, ...]:
    types = {"str": str, "int": int, "float": float, "bool": bool, "list": list}
    out = []
    for f in fields(cls):
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        m = f.metadata
        out.append(Setting(f.name, types[f.type] if isinstance(f.type, str) else f.type, default, m["help"],
                           m["min"], m["max"], m["choices"], m["group"], m.get("output", True), m.get("label", "")))
    return tuple(out)


SETTINGS = settings_of(UpscaleSettings)
SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}
