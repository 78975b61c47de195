"""Temporal modules placed after U-Net levels (``down_temp_blocks``, ``mid_temp_block``, ``up_temp_blocks``).

With the official configs (``attention_block_types = ["", ""]``) a module is

    out = x + shift_conv(spatial_res(temporal_res(x, temb), temb))

where ``temporal_res`` mixes 5 neighbouring frames (5x1x1 then 3x1x1
convolutions, zero-padded at the window's edges) and ``spatial_res`` is a
frame-wise 3x3 residual block. Both use 32-group GroupNorms with eps 1e-6
(hard-coded in the official code, whatever the U-Net config says), whose
statistics span every frame of the window.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional

import torch
from torch import nn

from vs_uav.core.models.resnet import InflatedConv3d, ResnetBlock3D, TemporalResnetBlock

__all__ = ["TemporalModuleConfig", "TemporalModule3D"]

_GROUPS = 32
_EPS = 1e-6
_NO_ATTENTION = ("", "")


@dataclass
class TemporalModuleConfig:
    """``temporal_module_config`` of the official U-Net config.

    Only the attention-free variant exists in the official models; the
    attention options are accepted (they are official keys) but any
    ``attention_block_types`` other than ``["", ""]`` is rejected, as are
    settings that would only matter with attention when they cannot be honoured.
    """

    num_attention_layers: int = 1
    num_attention_head: int = 8
    attention_head_dim: Optional[int] = None
    cross_attention_dim: Optional[int] = 768
    dropout: float = 0.0
    attention_bias: bool = False
    activation_fn: str = "geglu"
    only_cross_attention: bool = False
    upcast_attention: bool = False
    norm_num_groups: int = 8
    use_linear_projection: bool = True
    use_scale_shift: bool = False
    attention_block_types: tuple[str, str] = _NO_ATTENTION
    cross_frame_attention_mode: Optional[str] = None
    temporal_shift_fold_div: Optional[int] = None
    temporal_shift_direction: str = "right"
    use_dcn_warpping: bool = False
    use_deformable_conv: bool = True
    attention_dim_div: int = 2

    def __post_init__(self) -> None:
        types = self.attention_block_types
        if isinstance(types, (str, bytes)) or not isinstance(types, (list, tuple)) or len(types) != 2:
            raise ValueError(f"temporal_module_config.attention_block_types must be a pair, got {types!r}")
        self.attention_block_types = (types[0], types[1])
        if self.attention_block_types != _NO_ATTENTION:
            raise ValueError(
                "temporal_module_config.attention_block_types = "
                f"{list(self.attention_block_types)!r} is not supported: only the attention-free temporal "
                'module (["", ""], as in the official configs) is implemented'
            )
        if not isinstance(self.use_scale_shift, bool):
            raise ValueError(f"temporal_module_config.use_scale_shift must be a boolean, got {self.use_scale_shift!r}")

    @classmethod
    def from_dict(cls, d: Optional[Mapping[str, Any]]) -> "TemporalModuleConfig":
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise ValueError(f"temporal_module_config must be a mapping, got {d!r}")
        known = {f.name for f in fields(cls)}
        for key in d:
            if key not in known:
                raise ValueError(f"temporal_module_config: unknown key {key!r}")
        return cls(**dict(d))


class TemporalModule3D(nn.Module):
    """Residual temporal module; keys follow the official ``TemporalModule3D``."""

    def __init__(self, channels: int, temb_channels: int, config: Optional[TemporalModuleConfig] = None):
        super().__init__()
        config = config or TemporalModuleConfig()
        self.use_scale_shift = config.use_scale_shift
        self.resblocks_3d_temporal = TemporalResnetBlock(
            channels, kernel_t=5, temb_channels=temb_channels, groups=_GROUPS, eps=_EPS
        )
        self.resblocks_3d_spatial = ResnetBlock3D(
            channels, channels, temb_channels=temb_channels, groups=_GROUPS, groups_out=_GROUPS, eps=_EPS
        )
        if self.use_scale_shift:
            self.scale_shift_conv = InflatedConv3d(channels, channels * 2, kernel_size=1)
        else:
            self.shift_conv = InflatedConv3d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor, temb: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.resblocks_3d_temporal(x, temb)
        h = self.resblocks_3d_spatial(h, temb)
        if self.use_scale_shift:
            scale, shift = self.scale_shift_conv(h).chunk(2, dim=1)
            return x * (1 + scale) + shift
        return x + self.shift_conv(h)
