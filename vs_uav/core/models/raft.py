"""RAFT-large (Teed & Deng, 2020): the optical-flow network of the official propagator.

A clean-room implementation whose parameter names match the princeton-vl checkpoint
``propagator/raft-things.pth`` (minus the ``module.`` prefix that ``torch.nn.DataParallel``
added when it was saved): :func:`checkpoint_key` maps one onto the other. Reading the file
is :func:`vs_uav.weights.folder.load_raft`'s; sizes, clips and chunking are :class:`vs_uav.core.flow.RaftFlow`'s.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

# Refinement iterations of the official flow helper.
RAFT_ITERS = 20
# The checkpoint was saved from torch.nn.DataParallel: every key starts with this.
CHECKPOINT_PREFIX = "module."
# How error messages name the network a weight file must fit.
CHECKPOINT_NAME = "RAFT-large (raft-things)"


def checkpoint_key(key: str) -> str:
    """The :class:`RAFT` parameter name of an official checkpoint key."""
    return key.removeprefix(CHECKPOINT_PREFIX)


def _norm(kind: str, channels: int) -> nn.Module:
    # The feature net uses parameter-free instance norm, the context net batch norm.
    return nn.InstanceNorm2d(channels) if kind == "instance" else nn.BatchNorm2d(channels)


class _ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, norm: str, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.norm1 = _norm(norm, cout)
        self.norm2 = _norm(norm, cout)
        self.downsample: Optional[nn.Sequential] = None
        if stride != 1:
            # The checkpoint stores this norm twice, as norm3 and downsample.1: one shared module.
            self.norm3 = _norm(norm, cout)
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride), self.norm3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(skip + y)


class _Encoder(nn.Module):
    """Image to 1/8-resolution features (7x7 stem at 1/2, residual stages 64/96/128)."""

    def __init__(self, out_channels: int, norm: str) -> None:
        super().__init__()
        self.norm1 = _norm(norm, 64)  # registered first to keep the checkpoint's key order
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        stages = []
        cin = 64
        for cout, stride in ((64, 1), (96, 2), (128, 2)):
            stages.append(nn.Sequential(_ResidualBlock(cin, cout, norm, stride), _ResidualBlock(cout, cout, norm, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(128, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        return self.conv2(self.layer3(self.layer2(self.layer1(x))))


class _MotionEncoder(nn.Module):
    def __init__(self, corr_channels: int) -> None:
        super().__init__()
        self.convc1 = nn.Conv2d(corr_channels, 256, 1)
        self.convc2 = nn.Conv2d(256, 192, 3, padding=1)
        self.convf1 = nn.Conv2d(2, 128, 7, padding=3)
        self.convf2 = nn.Conv2d(128, 64, 3, padding=1)
        self.conv = nn.Conv2d(192 + 64, 126, 3, padding=1)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        c = F.relu(self.convc2(F.relu(self.convc1(corr))))
        f = F.relu(self.convf2(F.relu(self.convf1(flow))))
        # 126 learned channels plus the raw flow make the 128 motion features.
        return torch.cat((F.relu(self.conv(torch.cat((c, f), 1))), flow), 1)


class _SepConvGRU(nn.Module):
    """A GRU whose gates are a 1x5 convolution followed by a second GRU step with 5x1."""

    def __init__(self, hidden: int, inputs: int) -> None:
        super().__init__()
        cin = hidden + inputs
        for axis, kernel, pad in (("1", (1, 5), (0, 2)), ("2", (5, 1), (2, 0))):
            for gate in "zrq":
                setattr(self, f"conv{gate}{axis}", nn.Conv2d(cin, hidden, kernel, padding=pad))

    def _step(self, h: torch.Tensor, x: torch.Tensor, axis: str) -> torch.Tensor:
        hx = torch.cat((h, x), 1)
        z = torch.sigmoid(getattr(self, f"convz{axis}")(hx))
        r = torch.sigmoid(getattr(self, f"convr{axis}")(hx))
        q = torch.tanh(getattr(self, f"convq{axis}")(torch.cat((r * h, x), 1)))
        return h + z * (q - h)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._step(self._step(h, x, "1"), x, "2")


class _FlowHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(128, 256, 3, padding=1)
        self.conv2 = nn.Conv2d(256, 2, 3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(h)))


class _UpdateBlock(nn.Module):
    def __init__(self, corr_channels: int, hidden: int = 128, context: int = 128) -> None:
        super().__init__()
        self.encoder = _MotionEncoder(corr_channels)
        self.gru = _SepConvGRU(hidden, context + 128)
        self.flow_head = _FlowHead()
        # 8x8 sub-pixels times 3x3 neighbours: the weights of the convex upsampling.
        self.mask = nn.Sequential(nn.Conv2d(hidden, 256, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(256, 576, 1))

    def forward(
        self, hidden: torch.Tensor, context: torch.Tensor, corr: torch.Tensor, flow: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        motion = self.encoder(flow, corr)
        hidden = self.gru(hidden, torch.cat((context, motion), 1))
        return hidden, self.flow_head(hidden)

    def upsample_weights(self, hidden: torch.Tensor) -> torch.Tensor:
        # The 0.25 factor is part of the trained model.
        return 0.25 * self.mask(hidden)


class _CorrPyramid:
    """All-pairs feature correlation, pooled into a pyramid and looked up around points.

    Built and sampled in float32 whatever the network's dtype.
    """

    def __init__(self, fmap1: torch.Tensor, fmap2: torch.Tensor, levels: int = 4, radius: int = 4) -> None:
        n, c, h, w = fmap1.shape
        a = fmap1.float().flatten(2).transpose(1, 2)
        b = fmap2.float().flatten(2)
        vol = torch.bmm(a, b).div_(math.sqrt(c)).view(n * h * w, 1, h, w)
        self.pyramid = [vol]
        for _ in range(levels - 1):
            ph, pw = vol.shape[-2:]
            # A 1-pixel axis is kept rather than pooled to nothing: RAFT itself fails on
            # frames under 64 px; this keeps such frames working, if only roughly.
            vol = F.avg_pool2d(vol, kernel_size=(2 if ph > 1 else 1, 2 if pw > 1 else 1))
            self.pyramid.append(vol)
        d = torch.arange(-radius, radius + 1, dtype=torch.float32, device=fmap1.device)
        # Window tap (i, j) is offset (x = d[i], y = d[j]): x varies slowest along the
        # channel axis, the order the checkpoint was trained with.
        self.offsets = torch.stack(torch.meshgrid(d, d, indexing="ij"), dim=-1)  # (2r+1, 2r+1, 2) as (x, y)

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        """Correlations around ``coords`` (N, 2, h, w), pixel (x, y) positions in frame 2's 1/8 grid."""
        n, _, h, w = coords.shape
        centres = coords.permute(0, 2, 3, 1).reshape(n * h * w, 1, 1, 2)
        out = []
        for level, vol in enumerate(self.pyramid):
            lh, lw = vol.shape[-2:]
            pts = centres / (2**level) + self.offsets
            # Pixel-centre normalisation (align_corners=False) is well defined for 1-pixel
            # axes and samples exactly the same points as RAFT's align_corners=True form.
            size = torch.tensor([lw, lh], dtype=pts.dtype, device=pts.device)
            grid = (2.0 * pts + 1.0) / size - 1.0
            taps = F.grid_sample(vol, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            out.append(taps.view(n, h, w, -1))
        return torch.cat(out, dim=-1).permute(0, 3, 1, 2).contiguous()


class RAFT(nn.Module):
    """RAFT-large, with the parameter names of the princeton-vl checkpoint (minus ``module.``).

    Inputs are (N, 3, H, W) RGB in [-1, 1] with H and W multiples of 8; use
    :class:`RaftFlow` for arbitrary sizes, clips and chunking.
    """

    hidden_dim = 128
    context_dim = 128
    corr_levels = 4
    corr_radius = 4

    def __init__(self) -> None:
        super().__init__()
        self.fnet = _Encoder(256, "instance")
        self.cnet = _Encoder(self.hidden_dim + self.context_dim, "batch")
        self.update_block = _UpdateBlock(self.corr_levels * (2 * self.corr_radius + 1) ** 2)

    @property
    def dtype(self) -> torch.dtype:
        return self.fnet.conv1.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.fnet.conv1.weight.device

    def encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame features: matching features (float32) and context (network dtype)."""
        return self.fnet(frames).float(), self.cnet(frames)

    def refine(
        self, fmap1: torch.Tensor, fmap2: torch.Tensor, context: torch.Tensor, iters: int = RAFT_ITERS
    ) -> torch.Tensor:
        """Flow from frame 1 to frame 2 at full resolution, from their encodings."""
        hidden, ctx = torch.split(context, [self.hidden_dim, self.context_dim], dim=1)
        hidden, ctx = torch.tanh(hidden), torch.relu(ctx)
        corr = _CorrPyramid(fmap1, fmap2, self.corr_levels, self.corr_radius)
        n, _, h, w = fmap1.shape
        ys, xs = torch.meshgrid(
            torch.arange(h, dtype=torch.float32, device=fmap1.device),
            torch.arange(w, dtype=torch.float32, device=fmap1.device),
            indexing="ij",
        )
        # Positions are kept in float32 so that many small updates accumulate accurately.
        coords0 = torch.stack((xs, ys)).expand(n, 2, h, w)
        coords1 = coords0.clone()
        dtype = ctx.dtype
        for _ in range(iters):
            flow = coords1 - coords0
            hidden, delta = self.update_block(hidden, ctx, corr(coords1).to(dtype), flow.to(dtype))
            coords1 = coords1 + delta.float()
        # Only the final flow is used, so the upsampling weights are computed once.
        weights = self.update_block.upsample_weights(hidden).float()
        return self._upsample(coords1 - coords0, weights)

    @staticmethod
    def _upsample(flow: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """8x convex upsampling: each sub-pixel is a softmax-weighted mix of the 3x3 neighbours."""
        n, _, h, w = flow.shape
        weights = torch.softmax(weights.view(n, 9, 8, 8, h, w), dim=1)
        neighbours = F.unfold(8.0 * flow, kernel_size=3, padding=1).view(n, 2, 9, h, w)
        up = torch.einsum("nkabhw,nckhw->nchawb", weights, neighbours)
        return up.reshape(n, 2, 8 * h, 8 * w)

    def forward(self, image1: torch.Tensor, image2: torch.Tensor, iters: int = RAFT_ITERS) -> torch.Tensor:
        f1, ctx = self.encode(image1)
        f2 = self.fnet(image2).float()
        return self.refine(f1, f2, ctx, iters)
