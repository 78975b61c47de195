"""Bidirectional optical flow between low-resolution frames, for latent propagation.

Two methods:

* ``"raft"``: RAFT-large (the network is :mod:`vs_uav.core.models.raft`) with the official
  propagator checkpoint ``propagator/raft-things.pth``. As in the official flow helper,
  frames go in as they are, in [-1, 1], 20 refinement iterations run and the
  convex-upsampled final flow is returned.
* ``"dis"``: OpenCV's Dense Inverse Search on grayscale uint8 frames. It needs no
  weights and runs in milliseconds, at some cost in accuracy on large or complex motion.

Flows are (N, 2, H, W) (pairwise) or (B, 2, T-1, H, W) (clips) float32 tensors with
channels (x, y) in pixels. A flow from frame a to frame b lives on a's pixel grid:
pixel p of a corresponds to ``p + flow(p)`` in b.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F

from vs_uav.core.models.raft import RAFT, RAFT_ITERS

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
DeviceLike = Union[str, torch.device]

METHODS = ("raft", "dis")
# Default cap on the all-pairs correlation pyramids held at once (RAFT's main memory
# cost: (H/8 * W/8)^2 float32 values per pair, about 1.1 GB per pair at 1280x720).
CORR_BUDGET_BYTES = 1 << 30
# Frames per RAFT chunk; larger batches do not run faster on CPU and cost memory.
MAX_CHUNK_FRAMES = 12


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not supported; accepted: {', '.join(METHODS)}")
    return method


# --------------------------------------------------------------------------- estimators


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dim() != 4 or a.shape[1] != 3 or a.shape != b.shape:
        raise ValueError(
            f"frames must be two (N, 3, H, W) tensors of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


class FlowEstimator:
    """Flow between frame pairs. Frames are (N, 3, H, W) RGB in [-1, 1], any float dtype."""

    method: str = ""

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Flow from each frame of ``a`` to the same-index frame of ``b``: (N, 2, H, W) float32."""
        raise NotImplementedError

    def bidirectional(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a -> b, b -> a) flows, for a streaming caller that gets one new pair at a time."""
        return self(a, b), self(b, a)

    def clip(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward flows between consecutive frames of (T, 3, H, W): two (T-1, 2, H, W)."""
        return self.bidirectional(frames[:-1], frames[1:])


class DisFlow(FlowEstimator):
    """OpenCV DIS optical flow on BT.601 luma, uint8.

    The frames here are the low-resolution input, so detail is scarce: the default is
    the MEDIUM preset (12-px patches, more gradient-descent iterations, variational
    refinement) with the finest scale lowered to 0, i.e. patches matched at full size
    instead of the preset's half size. On smooth synthetic motion (3 degree rotation,
    4 % zoom, 2 px shift) at 64x64 to 180x320 this gave the lowest error (median about
    0.05 px; MEDIUM at its own scale 0.06-0.08 px, FAST and ULTRAFAST up to 0.2-0.4 px)
    for about 20 ms per flow at 320x240 on 2 CPU cores (9 ms at the preset's scale),
    negligible beside the diffusion it serves.
    An instance is not thread-safe (the OpenCV object keeps state between calls).
    """

    method = "dis"

    def __init__(self, preset: str = "medium", finest_scale: Optional[int] = 0) -> None:
        import cv2

        presets = {
            "ultrafast": cv2.DISOpticalFlow_PRESET_ULTRAFAST,
            "fast": cv2.DISOpticalFlow_PRESET_FAST,
            "medium": cv2.DISOpticalFlow_PRESET_MEDIUM,
        }
        if preset not in presets:
            raise ValueError(f"preset={preset!r} is not supported; accepted: {', '.join(presets)}")
        self._dis = cv2.DISOpticalFlow_create(presets[preset])
        if finest_scale is not None:  # None keeps the preset's own finest scale
            self._dis.setFinestScale(int(finest_scale))

    @staticmethod
    def _gray_u8(frames: torch.Tensor):
        rgb = (frames.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5
        luma = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
        return luma.round_().to(torch.uint8).cpu().numpy()

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        _check_pair(a, b)
        ga, gb = self._gray_u8(a), self._gray_u8(b)
        # calc(I0, I1) returns f with I0(p) ~ I1(p + f(p)): the forward flow, (H, W, 2) as (x, y).
        flows = [torch.from_numpy(self._dis.calc(x, y, None)) for x, y in zip(ga, gb)]
        return torch.stack(flows).permute(0, 3, 1, 2).to(device=a.device, dtype=torch.float32)

    def clip(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gray = self._gray_u8(frames)  # convert each frame once
        fw = [self._dis.calc(gray[i], gray[i + 1], None) for i in range(len(gray) - 1)]
        bw = [self._dis.calc(gray[i + 1], gray[i], None) for i in range(len(gray) - 1)]
        h, w = frames.shape[-2:]

        def stack(flows: list) -> torch.Tensor:
            if not flows:
                return frames.new_zeros((0, 2, h, w), dtype=torch.float32)
            out = torch.stack([torch.from_numpy(f) for f in flows]).permute(0, 3, 1, 2)
            return out.to(device=frames.device, dtype=torch.float32)

        return stack(fw), stack(bw)


class RaftFlow(FlowEstimator):
    """RAFT-large flow with the official helper's semantics, for any frame size.

    Frames are fed in [-1, 1] as they are, replicate-padded (centred) to a multiple of
    8, refined ``iters`` times; the final, convex-upsampled flow is cropped back. (The
    official helper resizes to a multiple of 8 instead; on sizes that are already
    multiples of 8 both are the same, otherwise padding avoids resampling the frames
    and rescaling the flow.) Each frame is encoded once even when it appears in two
    pairs, and pairs are batched in chunks whose correlation volumes fit
    ``corr_budget_bytes``.
    """

    method = "raft"

    def __init__(self, model: RAFT, iters: int = RAFT_ITERS, corr_budget_bytes: int = CORR_BUDGET_BYTES) -> None:
        self.model = model.eval()
        self.iters = int(iters)
        self.corr_budget_bytes = int(corr_budget_bytes)

    def _pad(self, frames: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
        h, w = frames.shape[-2:]
        ph, pw = -h % 8, -w % 8
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        x = frames.to(device=self.model.device, dtype=self.model.dtype)
        if ph or pw:
            x = F.pad(x, pad, mode="replicate")
        return x, pad

    @staticmethod
    def _crop(flow: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
        left, right, top, bottom = pad
        h, w = flow.shape[-2:]
        return flow[..., top : h - bottom, left : w - right]

    def _pairs_per_chunk(self, h: int, w: int) -> int:
        cells = (h // 8) * (w // 8)
        per_pair = 4 * cells * cells * 4 / 3  # float32 pyramid: 1 + 1/4 + 1/16 + ...
        return max(1, int(self.corr_budget_bytes // per_pair))

    @torch.no_grad()
    def _refine(self, f1: torch.Tensor, f2: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        step = self._pairs_per_chunk(f1.shape[-2] * 8, f1.shape[-1] * 8)
        out = [self.model.refine(f1[i : i + step], f2[i : i + step], ctx[i : i + step], self.iters)
               for i in range(0, f1.shape[0], step)]
        return torch.cat(out)

    @torch.no_grad()
    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        _check_pair(a, b)
        pa, pad = self._pad(a)
        pb, _ = self._pad(b)
        f1, ctx = self.model.encode(pa)
        f2 = self.model.fnet(pb).float()
        return self._crop(self._refine(f1, f2, ctx), pad).to(device=a.device, dtype=torch.float32)

    @torch.no_grad()
    def bidirectional(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_pair(a, b)
        n = a.shape[0]
        x, pad = self._pad(torch.cat((a, b)))
        fmap, ctx = self.model.encode(x)
        # Both directions in one batch: (a -> b) then (b -> a).
        flows = self._refine(fmap, fmap.roll(n, 0), ctx)
        flows = self._crop(flows, pad).to(device=a.device, dtype=torch.float32)
        return flows[:n], flows[n:]

    @torch.no_grad()
    def clip(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t, _, h, w = frames.shape
        if t < 2:
            empty = frames.new_zeros((0, 2, h, w), dtype=torch.float32)
            return empty, empty.clone()
        x, pad = self._pad(frames)
        pairs = max(1, min(MAX_CHUNK_FRAMES - 1, self._pairs_per_chunk(*x.shape[-2:]) // 2))
        fw, bw = [], []
        for s in range(0, t - 1, pairs):
            e = min(t, s + pairs + 1)  # chunks overlap by one frame so every pair is covered once
            fmap, ctx = self.model.encode(x[s:e])
            m = e - s - 1
            f1 = torch.cat((fmap[:-1], fmap[1:]))
            f2 = torch.cat((fmap[1:], fmap[:-1]))
            flows = self.model.refine(f1, f2, torch.cat((ctx[:-1], ctx[1:])), self.iters)
            flows = self._crop(flows, pad).to(device=frames.device, dtype=torch.float32)
            fw.append(flows[:m])
            bw.append(flows[m:])
            logger.debug("RAFT flows for frames %d-%d", s, e - 1)
        return torch.cat(fw), torch.cat(bw)


def flow_estimator(method: str, raft: Optional[RAFT] = None, iters: int = RAFT_ITERS) -> FlowEstimator:
    """An estimator for ``method``; ``"raft"`` needs the loaded :class:`RAFT`
    (:func:`vs_uav.weights.folder.load_raft` reads it from a model folder)."""
    _check_method(method)
    if method == "dis":
        return DisFlow()
    if raft is None:
        raise ValueError("method='raft' needs the RAFT weights: pass raft=load_raft(path); or use method='dis'")
    return RaftFlow(raft, iters=iters)


def estimate_flows(
    video: torch.Tensor,
    method: str = "raft",
    raft: Optional[Union[RAFT, FlowEstimator]] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bidirectional flows between consecutive frames of ``video`` (B, 3, T, H, W) in [-1, 1].

    Returns ``(flows_forward, flows_backward)``, each (B, 2, T-1, H, W) float32 on
    ``video``'s device: ``flows_forward[:, :, i]`` maps frame i to i+1 on frame i's grid,
    ``flows_backward[:, :, i]`` maps frame i+1 to i on frame i+1's grid. ``raft`` may
    also be a ready :class:`FlowEstimator` (then ``method`` must match it).
    """
    _check_method(method)
    if video.dim() != 5 or video.shape[1] != 3:
        raise ValueError(f"video must be (B, 3, T, H, W), got {tuple(video.shape)}")
    if isinstance(raft, FlowEstimator):
        if raft.method != method:
            raise ValueError(f"method={method!r} does not match the given {raft.method!r} estimator")
        estimator = raft
    else:
        estimator = flow_estimator(method, raft)
    fws, bws = [], []
    for clip in video.transpose(1, 2):  # (T, 3, H, W) per batch item
        fw, bw = estimator.clip(clip)
        fws.append(fw.transpose(0, 1))
        bws.append(bw.transpose(0, 1))
    return torch.stack(fws), torch.stack(bws)
