"""Training-free flow-guided recurrent latent propagation (Upscale-A-Video, Sec. 3.3).

At selected denoising steps the predicted clean latents x0 are propagated along the
optical flow: a backward sweep (last frame to first) and then a forward sweep over
its result. Each frame is fused half-and-half with the warped previous result where
the forward-backward flow check says the flow is reliable, and kept where it is not.

Flows are (B, 2, T-1, H, W) with channels (x, y) in pixels: ``flows_forward[:, :, i]``
maps frame i to frame i+1, ``flows_backward[:, :, i]`` frame i+1 to frame i.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Optional

import torch
import torch.nn.functional as F

# Forward-backward consistency thresholds and fusion weight of the official inference.
ALPHA1 = 0.001
ALPHA2 = 0.05
FUSE_SCALE = 0.5


def flow_warp(x: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Sample ``x`` (N, C, H, W) at ``p + flow(p)``; ``flow`` is (N, 2, H, W). Zero outside."""
    _, _, h, w = x.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=flow.dtype, device=flow.device),
        torch.arange(w, dtype=flow.dtype, device=flow.device),
        indexing="ij",
    )
    gx = 2.0 * (xs + flow[:, 0]) / max(w - 1, 1) - 1.0
    gy = 2.0 * (ys + flow[:, 1]) / max(h - 1, 1) - 1.0
    grid = torch.stack((gx, gy), dim=3).to(x.dtype)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=True)


def consistency_mask(
    flow_fw: torch.Tensor, flow_bw: torch.Tensor, alpha1: float = ALPHA1, alpha2: float = ALPHA2
) -> torch.Tensor:
    """1 where ``flow_bw`` sampled at ``p + flow_fw(p)`` cancels ``flow_fw`` (no occlusion)."""
    bw_at_target = flow_warp(flow_bw, flow_fw)
    diff = (flow_fw + bw_at_target).square().sum(1, keepdim=True)
    magnitude = flow_fw.square().sum(1, keepdim=True) + bw_at_target.square().sum(1, keepdim=True)
    return (diff < alpha1 * magnitude + alpha2).to(flow_fw.dtype)


def resize_flows(flows: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-resize (B, 2, T-1, h, w) flows to ``size`` and rescale their values.

    Both components are scaled by the width ratio, as the official propagation
    module does; the pipeline always passes flows at the latent size, where the
    ratio is 1, so this only matters for callers passing other sizes.
    """
    b, _, n, h, w = flows.shape
    if (h, w) == tuple(size):
        return flows
    return F.interpolate(flows, (n, *size), mode="area") * (size[1] / w)


@dataclass
class PropagationCarry:
    """Where the forward sweep of the previous chunk ended, so the next chunk continues it.

    ``feature`` is the previous chunk's propagated last frame (B, C, H, W); ``flow_forward``
    maps that frame to the chunk's first frame, ``flow_backward`` the reverse (B, 2, H, W).
    """

    feature: torch.Tensor
    flow_forward: torch.Tensor
    flow_backward: torch.Tensor


def _sweep(
    feats: list[torch.Tensor],
    order: range,
    flows_prop: torch.Tensor,
    flows_check: torch.Tensor,
    flow_index: Callable[[int], int],
    mode: str,
    fuse_scale: float,
    alpha1: float,
    alpha2: float,
    start: Optional[torch.Tensor] = None,
) -> list[torch.Tensor]:
    """One recurrent sweep; ``start`` is a propagated feature entering before the first frame."""
    out: list[torch.Tensor] = []
    prop = start
    for i in order:
        current = feats[i]
        if prop is None:
            prop = current
        else:
            k = flow_index(i)
            f_prop, f_check = flows_prop[:, :, k], flows_check[:, :, k]
            valid = consistency_mask(f_prop, f_check, alpha1, alpha2)
            warped = flow_warp(prop, f_prop, mode) * fuse_scale + current * (1 - fuse_scale)
            prop = valid * warped + (1 - valid) * current
        out.append(prop)
    return out


def propagate(
    x: torch.Tensor,
    flows_forward: torch.Tensor,
    flows_backward: torch.Tensor,
    interpolation: Literal["nearest", "bilinear"] = "nearest",
    fuse_scale: float = FUSE_SCALE,
    alpha1: float = ALPHA1,
    alpha2: float = ALPHA2,
    carry: Optional[PropagationCarry] = None,
) -> torch.Tensor:
    """Propagate (B, C, T, H, W) features along the flows; returns the forward sweep.

    With ``carry`` the forward sweep continues from the previous chunk; the backward
    sweep always starts at the chunk's last frame (the future is not known yet).
    """
    b, c, t, h, w = x.shape
    flows_forward = resize_flows(flows_forward, (h, w))
    flows_backward = resize_flows(flows_backward, (h, w))
    frames = list(x.unbind(2))
    # Backward sweep: frame i takes frame i+1's result, warped by the flow i -> i+1.
    back = _sweep(frames, range(t - 1, -1, -1), flows_forward, flows_backward, lambda i: i,
                  interpolation, fuse_scale, alpha1, alpha2)[::-1]
    # Forward sweep over the backward results: frame i takes frame i-1's, warped by i -> i-1.
    start = None
    if carry is not None:
        # The boundary pair becomes flow index 0, shifting the chunk's own pairs by one.
        flows_backward = torch.cat([carry.flow_backward[:, :, None], flows_backward], dim=2)
        flows_forward = torch.cat([carry.flow_forward[:, :, None], flows_forward], dim=2)
        start = carry.feature
    shift = 0 if carry is not None else 1
    fwd = _sweep(back, range(t), flows_backward, flows_forward, lambda i: i - shift,
                 interpolation, fuse_scale, alpha1, alpha2, start=start)
    return torch.stack(fwd, dim=2)
