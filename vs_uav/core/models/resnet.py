"""Residual building blocks shared by the video U-Net and the video VAEs.

Tensors are laid out (B, C, T, H, W). Spatial layers run frame by frame
("inflated" 2D convolutions), while GroupNorm sees the whole 5D tensor, so its
statistics span every frame of the window: the official models are trained that
way, which is why window and decode-group sizes are part of the mathematics.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class InflatedConv3d(nn.Conv2d):
    """A 2D convolution applied to every frame of a (B, C, T, H, W) tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        b, _, t, h, w = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(b * t, -1, h, w)
        x = super().forward(x)
        return x.reshape(b, t, *x.shape[1:]).permute(0, 2, 1, 3, 4)


class Upsample3D(nn.Module):
    """Nearest 2x spatial upsampling followed by a 3x3 frame-wise convolution."""

    def __init__(self, channels: int, out_channels: Optional[int] = None, use_conv: bool = True):
        super().__init__()
        self.channels = channels
        self.conv = InflatedConv3d(channels, out_channels or channels, 3, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor, output_size: Optional[Sequence[int]] = None) -> torch.Tensor:
        dtype = x.dtype
        if dtype == torch.bfloat16:  # nearest upsampling lacks bf16 kernels on some backends
            x = x.float()
        if output_size is None:
            x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        else:
            x = F.interpolate(x, size=tuple(output_size), mode="nearest")
        x = x.to(dtype)
        return self.conv(x) if self.conv is not None else x


class Downsample3D(nn.Module):
    """Stride-2 3x3 frame-wise convolution (padding 0 means SD's asymmetric pad)."""

    def __init__(self, channels: int, out_channels: Optional[int] = None, padding: int = 1):
        super().__init__()
        self.channels = channels
        self.padding = padding
        self.conv = InflatedConv3d(channels, out_channels or channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class ResnetBlock3D(nn.Module):
    """The SD residual block, frame-wise, with an optional time embedding.

    ``temporal_conv=True`` adds the video VAE's extra 3x3x3 convolution
    (``norm_3d`` / ``conv_3d``) after the residual sum: it mixes neighbouring
    frames and is zero-padded in time, so decode groups see no frames beyond
    their edges.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: Optional[int] = None,
        temb_channels: Optional[int] = 512,
        groups: int = 32,
        groups_out: Optional[int] = None,
        eps: float = 1e-6,
        output_scale_factor: float = 1.0,
        temporal_conv: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or in_channels
        groups_out = groups_out or groups
        self.in_channels, self.out_channels = in_channels, out_channels
        self.output_scale_factor = output_scale_factor

        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = InflatedConv3d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels is not None else None
        self.norm2 = nn.GroupNorm(groups_out, out_channels, eps=eps)
        self.conv2 = InflatedConv3d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = (
            InflatedConv3d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )
        if temporal_conv:
            self.norm_3d = nn.GroupNorm(groups_out, out_channels, eps=eps)
            self.conv_3d = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        else:
            self.norm_3d = self.conv_3d = None

    def forward(self, x: torch.Tensor, temb: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if temb is not None and self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        out = (x + h) / self.output_scale_factor
        if self.conv_3d is not None:
            out = (out + self.conv_3d(F.silu(self.norm_3d(out)))) / self.output_scale_factor
        return out


class TemporalResnetBlock(nn.Module):
    """Residual block of true 3D convolutions along time only.

    ``conv1`` has a (k, 1, 1) kernel, ``conv2`` always (3, 1, 1), as in the
    official temporal modules; both are zero-padded in time.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: Optional[int] = None,
        kernel_t: int = 3,
        temb_channels: Optional[int] = None,
        groups: int = 32,
        eps: float = 1e-6,
        output_scale_factor: float = 1.0,
    ):
        super().__init__()
        out_channels = out_channels or in_channels
        self.output_scale_factor = output_scale_factor
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv3d(in_channels, out_channels, (kernel_t, 1, 1), padding=((kernel_t - 1) // 2, 0, 0))
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels is not None else None
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv3d(out_channels, out_channels, (3, 1, 1), padding=(1, 0, 0))
        self.conv_shortcut = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if temb is not None and self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return (x + h) / self.output_scale_factor
