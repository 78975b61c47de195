"""The video VAEs of Upscale-A-Video (``vae_3d`` and ``vae_video``).

Both official variants are one class, told apart only by config data:

* ``vae_3d``: the SD x4 upscaler VAE with every layer applied frame by frame
  (``UpDecoderBlock3D``); it ignores the low-res image and ``w_lr``.
* ``vae_video``: ``UpDecoderBlock3D_plus`` decoder blocks, whose resnets add a
  3x3x3 convolution (``norm_3d`` / ``conv_3d``) mixing neighbouring frames, and
  ``condition_img``: the low-res frames, at latent resolution, are encoded by
  ``condition_in`` and fused into the features right after ``conv_in`` by an
  SFT block (``condition_fuse``), weighted by ``w_lr``.

Layout is (B, C, T, H, W) throughout. GroupNorm in the resnets sees the whole
5D tensor, so its statistics span every frame given to one ``decode`` call: the
official pipeline decodes groups of 3 frames, and that grouping is part of the
result. The mid-block attention, in contrast, works on each frame separately
(its own GroupNorm included), as the official block folds time into the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from vs_uav.core.models.config import JsonConfig
from vs_uav.core.models.resnet import Downsample3D, InflatedConv3d, ResnetBlock3D, Upsample3D

__all__ = [
    "VAEVideoConfig",
    "AutoencoderKLVideo",
    "LatentDistribution",
    "decode_latents_vsr",
]

_DOWN_BLOCK_TYPES = ("DownEncoderBlock3D",)
# "_plus" blocks carry the temporal 3x3x3 convolutions.
_UP_BLOCK_TYPES = {"UpDecoderBlock3D": False, "UpDecoderBlock3D_plus": True}
_ACT_FNS = ("silu", "swish")  # both are SiLU in the official resnets

# The official condition branch hard-codes these, whatever the config says:
# the low-res input is RGB (its first GroupNorm has 3 groups) and every other
# norm in the branch has 32 groups.
_COND_IMAGE_CHANNELS = 3
_COND_GROUPS = 32
_EPS = 1e-6


@dataclass
class VAEVideoConfig(JsonConfig):
    """Config of :class:`AutoencoderKLVideo`; field names and defaults follow the official class.

    ``use_temporal_block`` is accepted but, as in the official code, does not
    create anything: the temporal convolutions come with ``UpDecoderBlock3D_plus``
    blocks, and the mid block is the temporal kind when ``up_block_types[0]`` is.
    """

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock3D",)
    up_block_types: tuple[str, ...] = ("UpDecoderBlock3D",)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: Union[int, tuple[int, ...]] = 32  # only used by official tiling; kept for completeness
    scaling_factor: float = 0.18215
    condition_img: bool = False
    condition_channels: int = 128
    use_temporal_block: bool = False

    def __post_init__(self) -> None:
        # JSON gives lists; tuples keep the config hashable and immutable-looking.
        for name in ("down_block_types", "up_block_types", "block_out_channels"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                raise ValueError(f"VAEVideoConfig.{name} must be a list, got {value!r}")
            setattr(self, name, tuple(value))
        if isinstance(self.sample_size, list):
            self.sample_size = tuple(self.sample_size)
        self._validate()

    def _validate(self) -> None:
        def positive_int(name: str, value: Any) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"VAEVideoConfig.{name} must be a positive integer, got {value!r}")

        for name in ("in_channels", "out_channels", "layers_per_block", "latent_channels",
                     "norm_num_groups", "condition_channels"):
            positive_int(name, getattr(self, name))
        if not self.block_out_channels:
            raise ValueError("VAEVideoConfig.block_out_channels must not be empty")
        for i, ch in enumerate(self.block_out_channels):
            positive_int(f"block_out_channels[{i}]", ch)
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(
                "VAEVideoConfig: down_block_types, up_block_types and block_out_channels must have the same "
                f"length, got {len(self.down_block_types)}, {len(self.up_block_types)} and {n}"
            )
        for t in self.down_block_types:
            if t not in _DOWN_BLOCK_TYPES:
                raise ValueError(f"VAEVideoConfig: unsupported down block type {t!r}; supported: {_DOWN_BLOCK_TYPES}")
        for t in self.up_block_types:
            if t not in _UP_BLOCK_TYPES:
                raise ValueError(
                    f"VAEVideoConfig: unsupported up block type {t!r}; supported: {tuple(_UP_BLOCK_TYPES)}"
                )
        if self.act_fn not in _ACT_FNS:
            raise ValueError(f"VAEVideoConfig: unsupported act_fn {self.act_fn!r}; supported: {_ACT_FNS}")
        for name in ("condition_img", "use_temporal_block"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"VAEVideoConfig.{name} must be a boolean, got {getattr(self, name)!r}")
        sf = self.scaling_factor
        if isinstance(sf, bool) or not isinstance(sf, (int, float)) or not sf > 0:
            raise ValueError(f"VAEVideoConfig.scaling_factor must be a positive number, got {sf!r}")
        for i, ch in enumerate(self.block_out_channels):
            if ch % self.norm_num_groups:
                raise ValueError(
                    f"VAEVideoConfig: block_out_channels[{i}] = {ch} is not divisible by "
                    f"norm_num_groups = {self.norm_num_groups}"
                )
        if self.condition_img:
            for what, ch in (("condition_channels", self.condition_channels),
                             ("block_out_channels[-1]", self.block_out_channels[-1])):
                if ch % _COND_GROUPS:
                    raise ValueError(
                        f"VAEVideoConfig: {what} = {ch} must be a multiple of {_COND_GROUPS} "
                        "(the condition branch uses 32-group norms)"
                    )


class LatentDistribution:
    """Diagonal Gaussian over latents, from the encoder's stacked (mean, logvar) moments."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = torch.chunk(moments, 2, dim=1)
        # Same clamp as SD's VAE, so sampling never produces inf/0 std.
        self.logvar = logvar.clamp(-30.0, 20.0)

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype, device=self.mean.device)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean


class FrameAttention(nn.Module):
    """Single-head self-attention over the pixels of each frame (SD VAE mid-block attention).

    Parameter names follow the old diffusers ``AttentionBlock`` so official
    checkpoints load as they are. Time is folded into the batch: frames never
    attend to each other and the GroupNorm statistics are per frame.
    """

    def __init__(self, channels: int, groups: int, eps: float = _EPS):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps)
        self.query = nn.Linear(channels, channels)
        self.key = nn.Linear(channels, channels)
        self.value = nn.Linear(channels, channels)
        self.proj_attn = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        tokens = self.group_norm(frames).reshape(b * t, c, h * w).transpose(1, 2)
        # One head of width c: SDPA's default 1/sqrt(c) scale is the official one.
        attn = F.scaled_dot_product_attention(
            self.query(tokens).unsqueeze(1), self.key(tokens).unsqueeze(1), self.value(tokens).unsqueeze(1)
        ).squeeze(1)
        del tokens
        out = self.proj_attn(attn).transpose(1, 2).reshape(b * t, c, h, w)
        del attn
        out = out + frames
        return out.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)


class MidBlock(nn.Module):
    """resnet -> attention -> resnet at the lowest resolution."""

    def __init__(self, channels: int, groups: int, temporal: bool):
        super().__init__()
        # Registration order (attentions before resnets) fixes the state-dict order.
        self.attentions = nn.ModuleList([FrameAttention(channels, groups)])
        self.resnets = nn.ModuleList(
            [ResnetBlock3D(channels, channels, temb_channels=None, groups=groups, eps=_EPS, temporal_conv=temporal)
             for _ in range(2)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            x = resnet(attn(x))
        return x


class DownEncoderBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, add_downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock3D(in_channels if i == 0 else out_channels, out_channels, temb_channels=None,
                           groups=groups, eps=_EPS)
             for i in range(num_layers)]
        )
        # padding=0: SD's encoder pads right/bottom by one before the stride-2 conv.
        self.downsamplers = (
            nn.ModuleList([Downsample3D(out_channels, out_channels, padding=0)]) if add_downsample else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            for down in self.downsamplers:
                x = down(x)
        return x


class UpDecoderBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int,
                 add_upsample: bool, temporal: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock3D(in_channels if i == 0 else out_channels, out_channels, temb_channels=None,
                           groups=groups, eps=_EPS, temporal_conv=temporal)
             for i in range(num_layers)]
        )
        self.upsamplers = nn.ModuleList([Upsample3D(out_channels, out_channels)]) if add_upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            for up in self.upsamplers:
                x = up(x)
        return x


class SFTFuse(nn.Module):
    """Spatial feature transform: decoder features modulated by (condition, features).

    ``out = dec + w * (dec * scale + shift)``, so ``w = 0`` switches the
    low-res guidance off and larger ``w`` pulls the result towards the input.
    """

    def __init__(self, cond_channels: int, dec_channels: int):
        super().__init__()
        self.shared = nn.Sequential(
            ResnetBlock3D(cond_channels + dec_channels, dec_channels, temb_channels=None,
                          groups=_COND_GROUPS, eps=_EPS),
            ResnetBlock3D(dec_channels, dec_channels, temb_channels=None, groups=_COND_GROUPS, eps=_EPS),
        )
        self.scale = InflatedConv3d(dec_channels, dec_channels, 3, padding=1)
        self.shift = InflatedConv3d(dec_channels, dec_channels, 3, padding=1)

    def forward(self, cond: torch.Tensor, dec: torch.Tensor, w: float = 1.0) -> torch.Tensor:
        feat = self.shared(torch.cat([cond, dec], dim=1))
        scale = self.scale(feat)
        shift = self.shift(feat)
        del feat
        return dec + w * (dec * scale + shift)


class Encoder(nn.Module):
    def __init__(self, cfg: VAEVideoConfig):
        super().__init__()
        ch = cfg.block_out_channels
        groups = cfg.norm_num_groups
        self.conv_in = InflatedConv3d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        prev = ch[0]
        for i in range(len(ch)):
            self.down_blocks.append(
                DownEncoderBlock(prev, ch[i], cfg.layers_per_block, groups, add_downsample=i < len(ch) - 1)
            )
            prev = ch[i]
        self.mid_block = MidBlock(ch[-1], groups, temporal=False)
        self.conv_norm_out = nn.GroupNorm(groups, ch[-1], eps=_EPS)
        self.conv_out = InflatedConv3d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)  # mean and logvar

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEVideoConfig):
        super().__init__()
        ch = cfg.block_out_channels
        groups = cfg.norm_num_groups
        self.condition_img = cfg.condition_img
        self.conv_in = InflatedConv3d(cfg.latent_channels, ch[-1], 3, padding=1)
        if cfg.condition_img:
            # Both condition resnets always have the temporal conv (official ResnetBlock3D_plus).
            self.condition_in = nn.Sequential(
                ResnetBlock3D(_COND_IMAGE_CHANNELS, cfg.condition_channels, temb_channels=None,
                              groups=_COND_IMAGE_CHANNELS, groups_out=_COND_GROUPS, eps=_EPS, temporal_conv=True),
                ResnetBlock3D(cfg.condition_channels, cfg.condition_channels, temb_channels=None,
                              groups=_COND_GROUPS, eps=_EPS, temporal_conv=True),
            )
            self.condition_fuse = SFTFuse(cfg.condition_channels, ch[-1])
        self.up_blocks = nn.ModuleList()
        rev = list(reversed(ch))
        prev = rev[0]
        for i, block_type in enumerate(cfg.up_block_types):
            self.up_blocks.append(
                UpDecoderBlock(prev, rev[i], cfg.layers_per_block + 1, groups,
                               add_upsample=i < len(ch) - 1, temporal=_UP_BLOCK_TYPES[block_type])
            )
            prev = rev[i]
        # Registered after up_blocks to reproduce the official state-dict order; the
        # official code picks the mid-block kind from the first up block's type.
        self.mid_block = MidBlock(ch[-1], groups, temporal=_UP_BLOCK_TYPES[cfg.up_block_types[0]])
        self.conv_norm_out = nn.GroupNorm(groups, ch[0], eps=_EPS)
        self.conv_out = InflatedConv3d(ch[0], cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor, lr_image: Optional[torch.Tensor] = None, w_lr: float = 1.0) -> torch.Tensor:
        x = self.conv_in(z)
        if self.condition_img:
            if lr_image is None:
                raise ValueError("this VAE is conditioned on the low-res frames (condition_img): pass lr_image")
            if lr_image.shape[0] != z.shape[0] or lr_image.shape[2:] != z.shape[2:]:
                raise ValueError(
                    f"lr_image must be (B, 3, T, h, w) at latent resolution, matching the latents "
                    f"{tuple(z.shape)}; got {tuple(lr_image.shape)}"
                )
            cond = self.condition_in(lr_image.to(x.dtype))
            x = self.condition_fuse(cond, x, w_lr)
            del cond
        x = self.mid_block(x)
        # Mixed-precision setups may keep the mid block in another dtype than the up blocks.
        x = x.to(self.conv_norm_out.weight.dtype)
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class AutoencoderKLVideo(nn.Module):
    """Upscale-A-Video's VAE; both official variants, chosen by config data."""

    def __init__(self, config: Union[VAEVideoConfig, Mapping[str, Any]]):
        super().__init__()
        if not isinstance(config, VAEVideoConfig):
            config = VAEVideoConfig.from_dict(config)
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = InflatedConv3d(2 * config.latent_channels, 2 * config.latent_channels, 1)
        self.post_quant_conv = InflatedConv3d(config.latent_channels, config.latent_channels, 1)

    @classmethod
    def from_json_file(cls, path: Union[str, Path]) -> "AutoencoderKLVideo":
        return cls(VAEVideoConfig.from_json_file(path))

    @property
    def scaling_factor(self) -> float:
        return float(self.config.scaling_factor)

    @property
    def uses_lr_image(self) -> bool:
        """Whether ``decode`` reads ``lr_image`` and ``w_lr`` (the ``vae_video`` variant)."""
        return self.config.condition_img

    def encode(self, x: torch.Tensor) -> LatentDistribution:
        """Frames (B, C, T, H, W) in [-1, 1] -> latent distribution (unscaled latents)."""
        return LatentDistribution(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor, lr_image: Optional[torch.Tensor] = None, w_lr: float = 1.0) -> torch.Tensor:
        """Latents (B, C, T, h, w), already multiplied by ``1 / scaling_factor`` -> frames (B, 3, T, 4h, 4w).

        ``lr_image`` (B, 3, T, h, w), the clean low-res frames in [-1, 1], and
        ``w_lr`` are used only by a ``condition_img`` VAE; others ignore them.
        All T frames are decoded together: the resnets' GroupNorm statistics
        and the temporal convs (zero-padded at the ends) span exactly these frames.
        """
        if not self.config.condition_img:
            lr_image = None
        return self.decoder(self.post_quant_conv(z), lr_image, w_lr)

    def forward(self, z: torch.Tensor, lr_image: Optional[torch.Tensor] = None, w_lr: float = 1.0) -> torch.Tensor:
        return self.decode(z, lr_image, w_lr)


def decode_latents_vsr(
    vae: AutoencoderKLVideo,
    latents: torch.Tensor,
    lr_image: Optional[torch.Tensor],
    w_lr: float = 1.0,
) -> torch.Tensor:
    """The official pipeline's ``decode_latents_vsr`` for one decode group, in float32.

    ``vae.decode(latents * (1 / scaling_factor), lr_image, w_lr).clamp(-1, 1)``.
    The VAE must already be float32 (the official pipeline casts it: float16 overflows).
    """
    dtype = next(vae.parameters()).dtype
    if dtype != torch.float32:
        raise ValueError(f"decode_latents_vsr decodes in float32; the VAE is {dtype} (call vae.float())")
    z = latents.float() * (1.0 / vae.scaling_factor)
    if lr_image is not None:
        lr_image = lr_image.float()
    return vae.decode(z, lr_image, w_lr).clamp(-1, 1)
