"""Spatio-temporal transformer of the Upscale-A-Video U-Net.

Each cross-attention level of the U-Net holds :class:`Transformer3DModel`\\ s:
a temporal residual block (3x1x1 convolutions) followed by a transformer
whose block does, in order,

1. ``attn1``: attention over the pixels of each frame; with
   ``only_cross_attention`` (the SD x4 upscaler's setting for most levels) it
   attends to the text states instead, so it is a second cross-attention;
2. ``attn2``: cross-attention to the text states;
3. ``attn_temporal``: attention over the frames of the window at each pixel,
   with a learned relative-position bias and a rotary embedding on the first
   32 channels of every head;
4. a GEGLU feed-forward.

Parameter names follow the official checkpoint. Token layout inside the
transformer is ``(B * T, H * W, C)`` (frame-major, as in the official code).

Notes on exactness: the official GroupNorm at the transformer input is per
frame (time is folded into the batch), unlike the resnets' GroupNorm which
spans the whole window; and the temporal attention sees exactly the frames
of the window given to the U-Net, so the window length is part of the maths.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from vs_uav.core.models.resnet import TemporalResnetBlock

__all__ = [
    "ROTARY_DIM",
    "RotaryEmbedding",
    "RelativePositionBias",
    "Attention",
    "TemporalAttention",
    "FeedForward",
    "BasicTransformerBlock",
    "Transformer3DModel",
]

# The official model builds ``RotaryEmbedding(32)`` whatever the head width:
# only the first 32 channels of each head are rotated, so heads need >= 32.
ROTARY_DIM = 32
# The official temporal residual block inside each transformer hard-codes these.
_TEMPORAL_GROUPS = 32
_TEMPORAL_EPS = 1e-6
# Per-frame GroupNorm at the transformer input (official eps, not the config's).
_TRANSFORMER_NORM_EPS = 1e-6
# CUDA's fused SDPA kernels put the batch on a grid axis limited to 65535 blocks;
# temporal attention has one batch entry per pixel, so large frames are split.
_MAX_SDPA_BATCH = 32768


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``scaled_dot_product_attention`` over (N, H, L, D), in batch chunks when N is very large."""
    n = q.shape[0]
    if n <= _MAX_SDPA_BATCH:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = q.new_empty(*q.shape[:-1], v.shape[-1])
    for i in range(0, n, _MAX_SDPA_BATCH):
        j = min(i + _MAX_SDPA_BATCH, n)
        out[i:j] = F.scaled_dot_product_attention(q[i:j], k[i:j], v[i:j], attn_mask=mask)
    return out


class RotaryEmbedding(nn.Module):
    """Rotary position embedding over interleaved channel pairs.

    Same maths as ``rotary_embedding_torch.RotaryEmbedding(dim)`` with its
    defaults (``freqs_for="lang"``, theta 10000, no xpos, no interpolation):
    the angle of pair ``i`` at position ``p`` is ``p * freqs[i]``, pair
    ``(x[2i], x[2i+1])`` becomes ``(x[2i] cos - x[2i+1] sin, x[2i+1] cos + x[2i] sin)``,
    and only the first ``dim`` channels are rotated. ``freqs`` is a (frozen)
    parameter because the official checkpoint stores it.
    """

    def __init__(self, dim: int = ROTARY_DIM, theta: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"rotary dim must be even, got {dim}")
        self.dim = dim
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self.freqs = nn.Parameter(freqs, requires_grad=False)

    def cos_sin(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(seq_len, dim) cosine and sine tables, each angle repeated for its channel pair."""
        # Angles in float32 even for half models: fp16 angles lose the low frequencies.
        pos = torch.arange(seq_len, device=device, dtype=torch.float32)
        angles = (pos[:, None] * self.freqs.to(device=device, dtype=torch.float32)[None, :])
        angles = angles.repeat_interleave(2, dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    @staticmethod
    def rotate(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate the first ``cos.shape[-1]`` channels of ``t`` (positions on dim -2).

        Returns a new contiguous tensor.
        """
        rot_dim = cos.shape[-1]
        if t.shape[-1] < rot_dim:
            raise ValueError(f"rotary embedding needs a head width >= {rot_dim}, got {t.shape[-1]}")
        head = t[..., :rot_dim]
        pairs = head.unflatten(-1, (-1, 2))
        # (x0, x1) -> (-x1, x0) for each interleaved pair.
        swapped = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        rotated = head * cos + swapped * sin
        if t.shape[-1] == rot_dim:
            return rotated.contiguous()
        return torch.cat((rotated, t[..., rot_dim:]), dim=-1)


class RelativePositionBias(nn.Module):
    """T5-style bucketed relative position bias, one scalar per (bucket, head).

    Bucket layout of the official module: ``num_buckets // 2`` buckets per
    direction, the first half of those exact, the rest logarithmic up to
    ``max_distance`` (the official temporal attention uses 32 buckets, 32).
    """

    def __init__(self, heads: int, num_buckets: int = 32, max_distance: int = 32):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    def buckets(self, n: int, device: torch.device) -> torch.Tensor:
        pos = torch.arange(n, dtype=torch.long, device=device)
        # Official sign convention: the bucketed quantity is query_pos - key_pos.
        rel = pos[:, None] - pos[None, :]
        half = self.num_buckets // 2
        ret = (rel < 0).long() * half
        dist = rel.abs()
        max_exact = half // 2
        is_small = dist < max_exact
        # clamp(min=1) only avoids log(0); those entries take the exact branch.
        large = max_exact + (
            torch.log(dist.clamp(min=1).float() / max_exact)
            / math.log(self.max_distance / max_exact)
            * (half - max_exact)
        ).long()
        large = large.clamp(max=half - 1)
        return ret + torch.where(is_small, dist, large)

    def forward(self, n: int, device: torch.device) -> torch.Tensor:
        """(heads, n, n) additive bias for queries i and keys j."""
        return self.relative_attention_bias(self.buckets(n, device)).permute(2, 0, 1)


class Attention(nn.Module):
    """Multi-head attention with the old diffusers ``CrossAttention`` parameters.

    ``to_q/to_k/to_v`` have no bias; ``to_out.0`` does. ``context_dim`` None
    means self-attention.
    """

    def __init__(
        self,
        query_dim: int,
        heads: int,
        dim_head: int,
        context_dim: Optional[int] = None,
        upcast_attention: bool = False,
    ):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.upcast_attention = upcast_attention
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim if context_dim is not None else query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim if context_dim is not None else query_dim, inner, bias=False)
        # A list so the key is ``to_out.0``; the official dropout (p=0) after it is omitted.
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim)])

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        # (N, L, H*D) -> (N, H, L, D) as a view: SDPA takes strided inputs.
        return t.unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x`` (N, L, C); ``context`` (N, S, Cc) or None for self-attention."""
        src = x if context is None else context
        q, k, v = self._split(self.to_q(x)), self._split(self.to_k(src)), self._split(self.to_v(src))
        dtype = q.dtype
        if self.upcast_attention:
            q, k, v = q.float(), k.float(), v.float()
        # Default scale 1/sqrt(dim_head) is the official one.
        out = _sdpa(q, k, v).to(dtype)
        return self.to_out[0](out.transpose(1, 2).flatten(2))


class TemporalAttention(Attention):
    """Self-attention across the frames of the window, pixel by pixel.

    Scores get the relative position bias; queries and keys are rotated by the
    shared rotary embedding (which is registered here too, as ``rotary_emb``,
    because the official state dict names it in every block).
    """

    def __init__(
        self,
        query_dim: int,
        heads: int,
        dim_head: int,
        rotary_emb: RotaryEmbedding,
        upcast_attention: bool = False,
    ):
        super().__init__(query_dim, heads, dim_head, None, upcast_attention)
        self.time_rel_pos_bias = RelativePositionBias(heads=heads, max_distance=32)
        self.rotary_emb = rotary_emb

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, context: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """``x`` (B, T, L, C) normalised tokens; returns the (B, T, L, C) attention output."""
        if context is not None:
            raise ValueError("temporal attention is self-attention only")
        b, t, n, _ = x.shape
        h, d = self.heads, self.dim_head

        def split(y: torch.Tensor) -> torch.Tensor:
            # (B, T, L, H*D) -> (B, L, H, T, D): a view; frames become the sequence.
            return y.view(b, t, n, h, d).permute(0, 2, 3, 1, 4)

        q, k, v = split(self.to_q(x)), split(self.to_k(x)), split(self.to_v(x))
        dtype = q.dtype
        work = torch.float32 if self.upcast_attention else dtype
        cos, sin = self.rotary_emb.cos_sin(t, x.device, work)
        q = RotaryEmbedding.rotate(q.to(work), cos, sin).reshape(b * n, h, t, d)
        k = RotaryEmbedding.rotate(k.to(work), cos, sin).reshape(b * n, h, t, d)
        v = v.to(work).reshape(b * n, h, t, d)
        bias = self.time_rel_pos_bias(t, x.device).to(work)
        out = _sdpa(q, k, v, bias).to(dtype)
        # (B*L, H, T, D) -> (B, T, L, H*D)
        out = out.view(b, n, h, t, d).permute(0, 3, 1, 2, 4).reshape(b, t, n, h * d)
        return self.to_out[0](out)


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward, 4x wide; keys ``net.0.proj`` and ``net.2`` as in diffusers."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = dim * mult
        # Index 1 is the official dropout (p=0): kept as a placeholder for the key numbering.
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Identity(), nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Spatial (self or cross) attention, cross-attention, temporal attention, feed-forward."""

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        cross_attention_dim: int,
        rotary_emb: RotaryEmbedding,
        only_cross_attention: bool = False,
        upcast_attention: bool = False,
    ):
        super().__init__()
        self.only_cross_attention = only_cross_attention
        self.attn1 = Attention(
            dim, heads, dim_head, cross_attention_dim if only_cross_attention else None, upcast_attention
        )
        self.norm1 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, dim_head, cross_attention_dim, upcast_attention)
        self.norm2 = nn.LayerNorm(dim)
        self.attn_temporal = TemporalAttention(dim, heads, dim_head, rotary_emb, upcast_attention)
        self.norm_temporal = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)
        self.norm3 = nn.LayerNorm(dim)

    @staticmethod
    def _cross(attn: Attention, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # Every frame of a batch element attends to the same text states, so the
        # frames' pixels are queried together: no per-frame copy of the context.
        bt, n, c = x.shape
        b = context.shape[0]
        return attn(x.reshape(b, (bt // b) * n, c), context).view(bt, n, c)

    def forward(self, x: torch.Tensor, context: torch.Tensor, num_frames: int) -> torch.Tensor:
        """``x`` (B*T, L, C) tokens; ``context`` (B, S, Cc) text states."""
        if self.only_cross_attention:
            x = self._cross(self.attn1, self.norm1(x), context) + x
        else:
            x = self.attn1(self.norm1(x)) + x
        x = self._cross(self.attn2, self.norm2(x), context) + x

        bt, n, c = x.shape
        xt = x.view(bt // num_frames, num_frames, n, c)
        x = (self.attn_temporal(self.norm_temporal(xt)) + xt).view(bt, n, c)

        return self.ff(self.norm3(x)) + x


class Transformer3DModel(nn.Module):
    """Temporal residual block, then a one-layer spatio-temporal transformer with a residual.

    ``in_channels`` must be a multiple of ``heads``: the official linear
    ``proj_out`` only works when the attention width equals ``in_channels``.
    """

    def __init__(
        self,
        heads: int,
        in_channels: int,
        cross_attention_dim: int,
        norm_num_groups: int,
        rotary_emb: RotaryEmbedding,
        use_linear_projection: bool = True,
        only_cross_attention: bool = False,
        upcast_attention: bool = False,
        num_layers: int = 1,
    ):
        super().__init__()
        if in_channels % heads:
            raise ValueError(f"{in_channels} channels cannot be split into {heads} attention heads")
        dim_head = in_channels // heads
        if dim_head < rotary_emb.dim:
            raise ValueError(
                f"temporal attention needs heads of at least {rotary_emb.dim} channels (rotary embedding); "
                f"{in_channels} channels with {heads} heads give {dim_head}"
            )
        inner = heads * dim_head
        self.use_linear_projection = use_linear_projection

        self.resblock_temporal = TemporalResnetBlock(
            in_channels, kernel_t=3, temb_channels=None, groups=_TEMPORAL_GROUPS, eps=_TEMPORAL_EPS
        )
        self.norm = nn.GroupNorm(norm_num_groups, in_channels, eps=_TRANSFORMER_NORM_EPS)
        if use_linear_projection:
            self.proj_in: nn.Module = nn.Linear(in_channels, inner)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            [
                BasicTransformerBlock(
                    inner, heads, dim_head, cross_attention_dim, rotary_emb, only_cross_attention, upcast_attention
                )
                for _ in range(num_layers)
            ]
        )
        if use_linear_projection:
            # Official shape (inner, in_channels): equal to the right one since inner == in_channels.
            self.proj_out: nn.Module = nn.Linear(in_channels, inner)
        else:
            self.proj_out = nn.Conv2d(inner, in_channels, kernel_size=1)

    @staticmethod
    def _pointwise(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        # A 1x1 convolution is a per-token linear map: apply it in token layout.
        w = layer.weight
        return F.linear(x, w.flatten(1) if w.dim() == 4 else w, layer.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, T, H, W); ``context`` (B, S, Cc)."""
        b, c, t, h, w = x.shape
        x = self.resblock_temporal(x)
        # Per-frame GroupNorm (official: time folded into the batch).
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        tokens = self.norm(frames).permute(0, 2, 3, 1).reshape(b * t, h * w, c)
        tokens = self._pointwise(self.proj_in, tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens, context, t)
        tokens = self._pointwise(self.proj_out, tokens)
        # Back to (B, C, T, H, W), memory left frame-major like the inflated convolutions'.
        return frames.view(b, t, c, h, w).transpose(1, 2) + tokens.view(b, t, h, w, c).permute(0, 4, 1, 2, 3)
