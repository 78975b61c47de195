"""The video U-Net of Upscale-A-Video (``UNetVideoModel``).

It is the SD x4 upscaler U-Net inflated to video, layout (B, C, T, H, W):

* the input is the noisy latents concatenated with the (noised) low-res
  frames on channels; the noise level enters as a class embedding added to the
  timestep embedding;
* every resnet/convolution is frame-wise, but the resnets' GroupNorm statistics
  span the whole window;
* each cross-attention level has :class:`~vs_uav.core.models.attention.Transformer3DModel`
  blocks (temporal residual block + spatial/cross/temporal attention);
* optional :class:`~vs_uav.core.models.temporal.TemporalModule3D` after each level
  (``down_temporal_idx``, ``mid_temporal``, ``up_temporal_idx``).

The output therefore depends on which frames are processed together: call it
on the same windows as the official pipeline (8 frames) to reproduce it.

``attention_head_dim`` is, as in the official code, the number of heads.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from vs_uav.core.models.attention import ROTARY_DIM, RotaryEmbedding, Transformer3DModel
from vs_uav.core.models.config import JsonConfig
from vs_uav.core.models.resnet import Downsample3D, InflatedConv3d, ResnetBlock3D, Upsample3D
from vs_uav.core.models.temporal import TemporalModule3D, TemporalModuleConfig

__all__ = ["DeepFeature", "UNetVideoConfig", "UNetVideoModel"]

logger = logging.getLogger(__name__)

_DOWN_BLOCK_TYPES = ("DownBlock3D", "CrossAttnDownBlock3D")
_UP_BLOCK_TYPES = ("UpBlock3D", "CrossAttnUpBlock3D")
_MID_BLOCK_TYPES = ("UNetMidBlock3DCrossAttn",)
_ACT_FNS = ("silu", "swish")  # both are SiLU in the official resnets
_CLASS_EMBED_TYPES = (None, "timestep")  # official "identity" cannot work with (B,) noise levels


def _strip_res_prefix(name: str) -> str:
    # The official block factories accept an optional "UNetRes" prefix.
    return name[len("UNetRes"):] if name.startswith("UNetRes") else name


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_POSITIVE_INT = (lambda v, n: _integer(v) and v > 0,
                 "UNetVideoConfig.{name} must be a positive integer, got {value!r}")
_BOOLEAN = (lambda v, n: isinstance(v, bool), "UNetVideoConfig.{name} must be a boolean, got {value!r}")
_NUMBER = (lambda v, n: _number(v), "UNetVideoConfig.{name} must be a number, got {value!r}")
_POSITIVE_NUMBER = (lambda v, n: _number(v) and v > 0,
                    "UNetVideoConfig.{name} must be a positive number, got {value!r}")

# Values of the rules' fields that are not plain attributes.
_SOURCES = {
    "block lengths": lambda c: (len(c.down_block_types), len(c.up_block_types), len(c.block_out_channels)),
    "temporal_module_config": lambda c: c.temporal,  # parsing raises its own message, naming the bad key
    "attention_head_dim": lambda c: c.heads_per_block,  # one per block; raises on a wrong count
    "only_cross_attention": lambda c: c.only_cross_per_block,
}


def _rule_values(config: Any, field: str) -> list[tuple[str, Any]]:
    """(name, value) pairs a rule checks: the field's value, or each entry of an "x[]" field."""
    base = field.removesuffix("[]")
    value = _SOURCES[base](config) if base in _SOURCES else getattr(config, base)
    return [(field, value)] if base == field else [(f"{base}[{i}]", v) for i, v in enumerate(value)]


# What UNetVideoConfig accepts, field by field, checked in this order: (fields, rule, message).
# "x[]" checks each entry of x, named x[i]; a message is formatted with the value's ``name``, its
# ``field``, the ``value`` and ``n``, the number of blocks.
_RULES = (
    (("in_channels", "out_channels", "layers_per_block", "norm_num_groups", "cross_attention_dim"), *_POSITIVE_INT),
    (("mid_temporal", "center_input_sample", "flip_sin_to_cos", "dual_cross_attention", "use_linear_projection",
      "upcast_attention", "use_first_frame", "use_relative_position"), *_BOOLEAN),
    (("block_out_channels",), lambda v, n: len(v) > 0, "UNetVideoConfig.block_out_channels must not be empty"),
    (("block_out_channels[]",), *_POSITIVE_INT),
    (("block lengths",), lambda v, n: v[0] == v[1] == v[2],
     "UNetVideoConfig: down_block_types, up_block_types and block_out_channels must have the same length, "
     "got {value[0]}, {value[1]} and {value[2]}"),
    (("down_block_types[]",), lambda v, n: _strip_res_prefix(v) in _DOWN_BLOCK_TYPES,
     f"UNetVideoConfig: unsupported down block type {{value!r}}; supported: {_DOWN_BLOCK_TYPES}"),
    (("up_block_types[]",), lambda v, n: _strip_res_prefix(v) in _UP_BLOCK_TYPES,
     f"UNetVideoConfig: unsupported up block type {{value!r}}; supported: {_UP_BLOCK_TYPES}"),
    (("mid_block_type",), lambda v, n: v in _MID_BLOCK_TYPES,
     f"UNetVideoConfig: unsupported mid_block_type {{value!r}}; supported: {_MID_BLOCK_TYPES}"),
    (("act_fn",), lambda v, n: v in _ACT_FNS,
     f"UNetVideoConfig: unsupported act_fn {{value!r}}; supported: {_ACT_FNS}"),
    (("resnet_time_scale_shift",), lambda v, n: v == "default",
     "UNetVideoConfig: resnet_time_scale_shift={value!r} is not supported; "
     "only 'default' (additive time embedding) is implemented"),
    (("dual_cross_attention",), lambda v, n: not v,
     "UNetVideoConfig: dual_cross_attention is not supported (nor by the official code)"),
    (("use_first_frame",), lambda v, n: not v,
     "UNetVideoConfig: use_first_frame (sparse-causal attention) is not supported"),
    (("class_embed_type",), lambda v, n: v in _CLASS_EMBED_TYPES,
     f"UNetVideoConfig: unsupported class_embed_type {{value!r}}; supported: {_CLASS_EMBED_TYPES}"),
    (("num_class_embeds",), lambda v, n: v is None or _POSITIVE_INT[0](v, n), _POSITIVE_INT[1]),
    (("max_noise_level",), *_NUMBER),
    (("downsample_padding",), lambda v, n: v in (0, 1), "UNetVideoConfig.{name} must be 0 or 1, got {value!r}"),
    (("freq_shift",), *_NUMBER),
    (("norm_eps", "mid_block_scale_factor"), *_POSITIVE_NUMBER),
    (("temporal_module_config",), lambda v, n: isinstance(v, TemporalModuleConfig),
     "UNetVideoConfig.temporal_module_config must be a temporal module config, got {value!r}"),
    (("attention_head_dim[]",), *_POSITIVE_INT),
    (("only_cross_attention[]",), *_BOOLEAN),
    (("down_temporal_idx[]", "up_temporal_idx[]"), lambda v, n: _integer(v) and 0 <= v < n,
     "UNetVideoConfig.{field} entries must be block indices in [0, {n}), got {value!r}"),
)


@dataclass
class DeepFeature:
    """The deep feature of one U-Net call site (the input of its last up block), for step
    caching (:mod:`vs_uav.core.step_cache`).

    ``UNetVideoModel.forward(..., deep_cache=slot)`` runs fully and stores ``feature`` when
    ``reuse`` is False, and runs only the shallow path on the stored ``feature`` when True.
    """

    feature: Optional[torch.Tensor] = None
    reuse: bool = False


@dataclass
class UNetVideoConfig(JsonConfig):
    """Config of :class:`UNetVideoModel`; keys and defaults are the official class's.

    ``sample_size`` is informational; ``use_relative_position`` is accepted and,
    as in the official code, changes nothing (it never reaches an attention
    layer). ``temporal_module_config`` is parsed into a
    :class:`~vs_uav.core.models.temporal.TemporalModuleConfig`.
    """

    down_temporal_idx: tuple[int, ...] = (0, 1, 2)
    mid_temporal: bool = False
    up_temporal_idx: tuple[int, ...] = (1, 2, 3)
    temporal_module_config: Any = None
    sample_size: Optional[Union[int, tuple[int, ...]]] = None
    in_channels: int = 7
    out_channels: int = 4
    center_input_sample: bool = False
    max_noise_level: int = 350
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    attention_head_dim: Union[int, tuple[int, ...]] = 8
    block_out_channels: tuple[int, ...] = (256, 512, 512, 1024)
    down_block_types: tuple[str, ...] = (
        "DownBlock3D",
        "CrossAttnDownBlock3D",
        "CrossAttnDownBlock3D",
        "CrossAttnDownBlock3D",
    )
    mid_block_type: str = "UNetMidBlock3DCrossAttn"
    up_block_types: tuple[str, ...] = (
        "CrossAttnUpBlock3D",
        "CrossAttnUpBlock3D",
        "CrossAttnUpBlock3D",
        "UpBlock3D",
    )
    only_cross_attention: Union[bool, tuple[bool, ...]] = (True, True, True, False)
    layers_per_block: int = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    act_fn: str = "silu"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 1024
    dual_cross_attention: bool = False
    use_linear_projection: bool = True
    class_embed_type: Optional[str] = None
    num_class_embeds: Optional[int] = 1000
    upcast_attention: bool = False
    resnet_time_scale_shift: str = "default"
    use_first_frame: bool = False
    use_relative_position: bool = False

    def __post_init__(self) -> None:
        # JSON gives lists; store tuples.
        for name in ("down_temporal_idx", "up_temporal_idx", "block_out_channels",
                     "down_block_types", "up_block_types"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                raise ValueError(f"UNetVideoConfig.{name} must be a list, got {value!r}")
            setattr(self, name, tuple(value))
        for name in ("attention_head_dim", "only_cross_attention", "sample_size"):
            value = getattr(self, name)
            if isinstance(value, list):
                setattr(self, name, tuple(value))
        self._validate()

    # -- validation -------------------------------------------------------------------------

    def _validate(self) -> None:
        """ValueError (one line, naming the field) at the first broken rule of ``_RULES``, then at
        the first channel count the blocks cannot take."""
        n = len(self.block_out_channels)
        for fields, ok, message in _RULES:
            for field in fields:
                for name, value in _rule_values(self, field):
                    if not ok(value, n):
                        raise ValueError(message.format(name=name, field=field.removesuffix("[]"), value=value, n=n))

        # Channel constraints, checked here so a bad config fails before any allocation.
        for i, ch in enumerate(self.block_out_channels):
            if ch % self.norm_num_groups:
                raise ValueError(
                    f"UNetVideoConfig: block_out_channels[{i}] = {ch} is not divisible by "
                    f"norm_num_groups = {self.norm_num_groups}"
                )
        heads = self.heads_per_block
        rev = list(reversed(self.block_out_channels))
        # (level, channels, heads) of every transformer: cross-attention down/up blocks and the mid block.
        attn_levels = [
            (i, self.block_out_channels[i], heads[i])
            for i, t in enumerate(self.down_block_types)
            if _strip_res_prefix(t) == "CrossAttnDownBlock3D"
        ]
        attn_levels += [
            (n - 1 - i, rev[i], heads[n - 1 - i])
            for i, t in enumerate(self.up_block_types)
            if _strip_res_prefix(t) == "CrossAttnUpBlock3D"
        ]
        attn_levels.append((n - 1, self.block_out_channels[-1], heads[-1]))  # mid block
        for i, ch, h in attn_levels:
            # The transformers' temporal resblocks hard-code 32-group norms.
            if ch % 32:
                raise ValueError(
                    f"UNetVideoConfig: block_out_channels[{i}] = {ch} must be a multiple of 32 "
                    "(the transformers' temporal blocks use 32-group norms)"
                )
            if ch % h:
                raise ValueError(f"UNetVideoConfig: block_out_channels[{i}] = {ch} is not divisible by {h} heads")
            if ch // h < ROTARY_DIM:
                raise ValueError(
                    f"UNetVideoConfig: block_out_channels[{i}] = {ch} with {h} heads gives {ch // h}-channel heads; "
                    f"the temporal attention's rotary embedding needs at least {ROTARY_DIM}"
                )
        temporal_channels = [self.block_out_channels[i] for i in self.down_temporal_idx]
        temporal_channels += [rev[i] for i in self.up_temporal_idx]
        if self.mid_temporal:
            temporal_channels.append(self.block_out_channels[-1])
        for c in temporal_channels:
            if c % 32:
                raise ValueError(
                    f"UNetVideoConfig: temporal modules need channel counts that are multiples of 32 "
                    f"(their norms have 32 groups), got {c}"
                )

    @property
    def temporal(self) -> TemporalModuleConfig:
        """The parsed ``temporal_module_config`` (None means the official module defaults)."""
        if isinstance(self.temporal_module_config, TemporalModuleConfig):
            return self.temporal_module_config
        return TemporalModuleConfig.from_dict(self.temporal_module_config)

    def to_dict(self) -> dict[str, Any]:
        """The config as official keys (JSON-ready)."""
        d = asdict(self)
        for key, value in d.items():
            if isinstance(value, tuple):
                d[key] = list(value)
        if isinstance(d["temporal_module_config"], dict):
            d["temporal_module_config"] = {
                k: list(v) if isinstance(v, tuple) else v for k, v in d["temporal_module_config"].items()
            }
        return d

    @property
    def heads_per_block(self) -> tuple[int, ...]:
        n = len(self.block_out_channels)
        value = self.attention_head_dim
        if isinstance(value, tuple):
            if len(value) != n:
                raise ValueError(f"UNetVideoConfig.attention_head_dim needs {n} entries, got {len(value)}")
            return value
        return (value,) * n

    @property
    def only_cross_per_block(self) -> tuple[bool, ...]:
        n = len(self.block_out_channels)
        value = self.only_cross_attention
        if isinstance(value, tuple):
            if len(value) != n:
                raise ValueError(f"UNetVideoConfig.only_cross_attention needs {n} entries, got {len(value)}")
            return value
        return (value,) * n


# -- embeddings ---------------------------------------------------------------------------------


def timestep_embedding(
    timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool, freq_shift: float, max_period: float = 10000.0
) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim) in float32, as diffusers' ``get_timestep_embedding``."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    angles = timesteps[:, None].float() * freqs[None, :]
    parts = (angles.cos(), angles.sin()) if flip_sin_to_cos else (angles.sin(), angles.cos())
    emb = torch.cat(parts, dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class _NoTemporalModule(nn.Module):
    """Placeholder keeping the temporal module lists indexed like the U-Net levels."""

    def forward(self, x: torch.Tensor, temb: Optional[torch.Tensor] = None) -> torch.Tensor:
        return x


# -- blocks -------------------------------------------------------------------------------------


def _transformers(num_layers: int, heads: int, channels: int, cfg: "UNetVideoConfig",
                  rotary_emb: RotaryEmbedding, only_cross_attention: bool) -> nn.ModuleList:
    """The spatial-temporal transformers of one down or up block."""
    return nn.ModuleList(
        Transformer3DModel(heads, channels, cfg.cross_attention_dim, cfg.norm_num_groups, rotary_emb,
                           cfg.use_linear_projection, only_cross_attention, cfg.upcast_attention)
        for _ in range(num_layers)
    )


class _DownBlock(nn.Module):
    """``DownBlock3D`` / ``CrossAttnDownBlock3D``: resnets (each followed by a transformer), then a downsampler."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        num_layers: int,
        add_downsample: bool,
        cfg: UNetVideoConfig,
        rotary_emb: RotaryEmbedding,
        heads: Optional[int],
        only_cross_attention: bool = False,
    ):
        super().__init__()
        self.has_cross_attention = heads is not None
        # Registration order (attentions before resnets) reproduces the official state-dict order.
        if heads is not None:
            self.attentions = _transformers(num_layers, heads, out_channels, cfg, rotary_emb, only_cross_attention)
        self.resnets = nn.ModuleList(
            [
                ResnetBlock3D(
                    in_channels if i == 0 else out_channels, out_channels, temb_channels=temb_channels,
                    groups=cfg.norm_num_groups, eps=cfg.norm_eps,
                )
                for i in range(num_layers)
            ]
        )
        self.downsamplers = (
            nn.ModuleList([Downsample3D(out_channels, out_channels, padding=cfg.downsample_padding)])
            if add_downsample
            else None
        )

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor, context: Optional[torch.Tensor], downsample: bool = True
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips: list[torch.Tensor] = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.has_cross_attention:
                x = self.attentions[i](x, context)
            skips.append(x)
        if self.downsamplers is not None and downsample:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class _UpBlock(nn.Module):
    """``UpBlock3D`` / ``CrossAttnUpBlock3D``: (skip concat, resnet, transformer) x N, then an upsampler."""

    def __init__(
        self,
        in_channels: int,
        prev_output_channels: int,
        out_channels: int,
        temb_channels: int,
        num_layers: int,
        add_upsample: bool,
        cfg: UNetVideoConfig,
        rotary_emb: RotaryEmbedding,
        heads: Optional[int],
        only_cross_attention: bool = False,
    ):
        super().__init__()
        self.has_cross_attention = heads is not None
        if heads is not None:
            self.attentions = _transformers(num_layers, heads, out_channels, cfg, rotary_emb, only_cross_attention)
        resnets = []
        for i in range(num_layers):
            skip_channels = in_channels if i == num_layers - 1 else out_channels
            res_in = prev_output_channels if i == 0 else out_channels
            resnets.append(
                ResnetBlock3D(
                    res_in + skip_channels, out_channels, temb_channels=temb_channels,
                    groups=cfg.norm_num_groups, eps=cfg.norm_eps,
                )
            )
        self.resnets = nn.ModuleList(resnets)
        self.upsamplers = nn.ModuleList([Upsample3D(out_channels, out_channels)]) if add_upsample else None

    def forward(
        self,
        x: torch.Tensor,
        skips: list[torch.Tensor],
        temb: torch.Tensor,
        context: Optional[torch.Tensor],
        upsample_size: Optional[Sequence[int]] = None,
    ) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
            if self.has_cross_attention:
                x = self.attentions[i](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class _MidBlock(nn.Module):
    """``UNetMidBlock3DCrossAttn``: resnet, (transformer, resnet) x 1."""

    def __init__(
        self, channels: int, temb_channels: int, cfg: UNetVideoConfig, rotary_emb: RotaryEmbedding, heads: int
    ):
        super().__init__()
        self.attentions = nn.ModuleList(
            [
                Transformer3DModel(
                    heads, channels, cfg.cross_attention_dim, cfg.norm_num_groups, rotary_emb,
                    cfg.use_linear_projection, False, cfg.upcast_attention,
                )
            ]
        )
        self.resnets = nn.ModuleList(
            [
                ResnetBlock3D(
                    channels, channels, temb_channels=temb_channels, groups=cfg.norm_num_groups,
                    eps=cfg.norm_eps, output_scale_factor=cfg.mid_block_scale_factor,
                )
                for _ in range(2)
            ]
        )

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: Optional[torch.Tensor]) -> torch.Tensor:
        x = self.resnets[0](x, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            x = resnet(attn(x, context), temb)
        return x


# -- the model ----------------------------------------------------------------------------------


class UNetVideoModel(nn.Module):
    """Upscale-A-Video's U-Net; ``state_dict`` keys and shapes are the official ones.

    The rotary embedding's ``freqs`` is one parameter shared by every temporal
    attention; the state dict lists it under 17 names (one per transformer
    block plus ``temporal_rotary_emb.freqs``), like the official checkpoint.
    """

    def __init__(self, config: UNetVideoConfig):
        super().__init__()
        self.config = config
        cfg = config
        ch = cfg.block_out_channels
        n = len(ch)
        heads = cfg.heads_per_block
        only_cross = cfg.only_cross_per_block
        temb_dim = ch[0] * 4

        # Registration order follows the official module so state_dict() lists keys in the same order.
        self.conv_in = InflatedConv3d(cfg.in_channels, ch[0], kernel_size=3, padding=1)
        self.time_embedding = TimestepEmbedding(ch[0], temb_dim)
        self.class_embedding: Optional[nn.Module]
        if cfg.class_embed_type is None and cfg.num_class_embeds is not None:
            self.class_embedding = nn.Embedding(cfg.num_class_embeds, temb_dim)  # noise level
        elif cfg.class_embed_type == "timestep":
            self.class_embedding = TimestepEmbedding(ch[0], temb_dim)
        else:
            self.class_embedding = None

        self.down_blocks = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        self.down_temp_blocks = nn.ModuleList()
        self.up_temp_blocks = nn.ModuleList()
        # Fixed width 32, as in the official model.
        self.temporal_rotary_emb = RotaryEmbedding(ROTARY_DIM)
        rotary = self.temporal_rotary_emb

        out_ch = ch[0]
        for i, block_type in enumerate(cfg.down_block_types):
            in_ch, out_ch = out_ch, ch[i]
            cross = _strip_res_prefix(block_type) == "CrossAttnDownBlock3D"
            self.down_blocks.append(
                _DownBlock(
                    in_ch, out_ch, temb_dim, cfg.layers_per_block, i < n - 1, cfg, rotary,
                    heads[i] if cross else None, only_cross[i],
                )
            )
            self.down_temp_blocks.append(
                TemporalModule3D(out_ch, temb_dim, cfg.temporal) if i in cfg.down_temporal_idx else _NoTemporalModule()
            )

        self.mid_block = _MidBlock(ch[-1], temb_dim, cfg, rotary, heads[-1])
        self.mid_temp_block = (
            TemporalModule3D(ch[-1], temb_dim, cfg.temporal) if cfg.mid_temporal else _NoTemporalModule()
        )

        rev_ch = list(reversed(ch))
        rev_heads = list(reversed(heads))
        rev_cross = list(reversed(only_cross))
        self.num_upsamplers = 0
        out_ch = rev_ch[0]
        for i, block_type in enumerate(cfg.up_block_types):
            prev_ch, out_ch = out_ch, rev_ch[i]
            in_ch = rev_ch[min(i + 1, n - 1)]
            add_upsample = i < n - 1
            self.num_upsamplers += int(add_upsample)
            cross = _strip_res_prefix(block_type) == "CrossAttnUpBlock3D"
            self.up_blocks.append(
                _UpBlock(
                    in_ch, prev_ch, out_ch, temb_dim, cfg.layers_per_block + 1, add_upsample, cfg, rotary,
                    rev_heads[i] if cross else None, rev_cross[i],
                )
            )
            self.up_temp_blocks.append(
                TemporalModule3D(out_ch, temb_dim, cfg.temporal) if i in cfg.up_temporal_idx else _NoTemporalModule()
            )

        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, ch[0], eps=cfg.norm_eps)
        self.conv_out = InflatedConv3d(ch[0], cfg.out_channels, kernel_size=3, padding=1)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def _embedding(
        self, timestep: Union[torch.Tensor, int, float], class_labels: Optional[Union[torch.Tensor, int]], batch: int
    ) -> torch.Tensor:
        cfg = self.config
        device, dtype = self.device, self.dtype
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], dtype=torch.float64 if isinstance(timestep, float) else torch.int64)
        timesteps = timestep.reshape(-1).to(device)
        if timesteps.numel() not in (1, batch):
            raise ValueError(f"timestep must be a scalar or have {batch} entries, got shape {tuple(timestep.shape)}")
        timesteps = timesteps.expand(batch)
        # The sinusoidal part is float32; the MLP runs in the model's dtype.
        t_emb = timestep_embedding(timesteps, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        emb = self.time_embedding(t_emb.to(dtype))

        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("class_labels (the noise level) must be given: this U-Net has a class embedding")
            if not torch.is_tensor(class_labels):
                class_labels = torch.tensor([class_labels], dtype=torch.long)
            if torch.any(class_labels > cfg.max_noise_level):
                raise ValueError(f"noise level must be <= {cfg.max_noise_level}, got {class_labels.tolist()}")
            labels = class_labels.reshape(-1).to(device)
            if labels.numel() not in (1, batch):
                raise ValueError(f"class_labels must have 1 or {batch} entries, got {labels.numel()}")
            labels = labels.expand(batch)
            if cfg.class_embed_type == "timestep":
                labels = timestep_embedding(labels, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
                labels = labels.to(dtype)
            emb = emb + self.class_embedding(labels).to(dtype)
        return emb

    def forward(
        self,
        sample: torch.Tensor,
        timestep: Union[torch.Tensor, int, float],
        low_res: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        class_labels: Optional[Union[torch.Tensor, int]] = None,
        *,
        deep_cache: Optional[DeepFeature] = None,
    ) -> torch.Tensor:
        """Predict the model output (v for the official scheduler) for one window.

        ``sample`` (B, 4, T, H, W) latents, ``low_res`` (B, 3, T, H, W) noised
        low-res frames, ``encoder_hidden_states`` (B, S, cross_attention_dim),
        ``class_labels`` (B,) noise levels. Inputs are cast to the model's dtype.
        ``deep_cache`` (step caching, :mod:`vs_uav.core.step_cache`): run fully and store the
        deep feature in it, or, when its ``reuse`` is set, run only the shallow path on
        the stored feature.
        """
        if sample.dim() != 5 or low_res.dim() != 5:
            raise ValueError(f"sample and low_res must be (B, C, T, H, W), got {tuple(sample.shape)} and "
                             f"{tuple(low_res.shape)}")
        dtype = self.dtype
        x = torch.cat([sample.to(dtype), low_res.to(dtype)], dim=1)
        context = encoder_hidden_states.to(dtype)
        if context.shape[0] != x.shape[0]:
            raise ValueError(
                f"encoder_hidden_states batch {context.shape[0]} does not match the sample batch {x.shape[0]}"
            )
        if self.config.center_input_sample:
            x = 2 * x - 1.0

        # Sizes not divisible by the total upsampling factor: force each upsampler's output size.
        factor = 2 ** self.num_upsamplers
        forward_upsample_size = any(s % factor for s in x.shape[-2:])
        if forward_upsample_size:
            logger.debug("frame size %s is not a multiple of %d: forcing upsample sizes", tuple(x.shape[-2:]), factor)

        emb = self._embedding(timestep, class_labels, x.shape[0])

        x = self.conv_in(x)
        skips: list[torch.Tensor] = [x]
        last = len(self.up_blocks) - 1
        shallow = deep_cache is not None and deep_cache.reuse
        if shallow:
            # The last up block's skips are conv_in's output and down block 0's resnet
            # outputs; the downsampler and down temporal block 0 only feed deeper levels.
            _, res = self.down_blocks[0](x, emb, context, downsample=False)
            skips.extend(res)
            x = deep_cache.feature
            b, _, t, h, w = skips[0].shape
            if x is None or (x.shape[0], *x.shape[2:]) != (b, t, h, w):
                got = None if x is None else tuple(x.shape)
                raise ValueError(f"deep_cache.feature has shape {got}; accepted: a feature stored by a full call "
                                 f"on {b} x {t} frames of {h}x{w}")
        else:
            for block, temp in zip(self.down_blocks, self.down_temp_blocks):
                x, res = block(x, emb, context)
                skips.extend(res)
                x = temp(x, emb)

            x = self.mid_temp_block(self.mid_block(x, emb, context), emb)

        for i, (block, temp) in enumerate(zip(self.up_blocks, self.up_temp_blocks)):
            if shallow and i < last:
                continue
            if i == last and deep_cache is not None and not shallow:
                deep_cache.feature = x  # what the deeper path hands the last up block
            take = len(block.resnets)
            res, skips = skips[-take:], skips[:-take]
            upsample_size = skips[-1].shape[2:] if forward_upsample_size and i < len(self.up_blocks) - 1 else None
            x = temp(block(x, res, emb, context, upsample_size), emb)

        x = F.silu(self.conv_norm_out(x))
        return self.conv_out(x)
