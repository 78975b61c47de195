"""Torch-level accelerations of the video U-Net, applied in place to a loaded model.

* :func:`enable_fp8_weights`: layerwise casting. Linear and convolution weights are
  stored as ``float8_e4m3fn`` (one byte) with a power-of-two per-tensor scale and cast to
  the compute dtype when each layer runs, so only one layer at a time holds a full-width
  copy. Norms, embeddings, biases and the precision-sensitive first/last layers stay in
  the compute dtype. ``state_dict`` keeps the official keys (and gives the weights back
  in the compute dtype); loading official weights into a converted model quantises them.
* :func:`enable_group_offload`: the U-Net's top-level blocks live in host memory (pinned
  on CUDA) and are copied to the device just before they run; afterwards the device copy
  is dropped (the host copy is still valid: weights never change). Same numbers.
* :func:`compile_blocks`: regional compilation. ``torch.compile`` on each repeated block
  (resnet, transformer, temporal module) instead of the whole U-Net: the blocks share
  code, so compiling them is far shorter than one huge graph, and the compiled artefacts
  go to a per-user cache (:func:`inductor_cache_dir`) that later runs reuse.

:meth:`vs_uav.engine.pipeline.UpscalePipeline.configure` is the one place that applies them.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from vs_uav.core.models.attention import Transformer3DModel
from vs_uav.core.models.resnet import ResnetBlock3D
from vs_uav.core.models.temporal import TemporalModule3D

__all__ = [
    "FP8", "FP8_SKIP", "COMPILED_BLOCKS", "enable_fp8_weights", "is_fp8", "weight_bytes",
    "enable_group_offload", "disable_group_offload", "offload_device_bytes", "compile_blocks", "uncompile_blocks", "inductor_cache_dir",
]

logger = logging.getLogger(__name__)

FP8 = torch.float8_e4m3fn
_FP8_MAX = torch.finfo(FP8).max  # 448
# Kept in the compute dtype, as diffusers' layerwise casting keeps them: the input and output
# convolutions and the timestep MLP (tiny, and every output depends on them), and the
# transformers' projections (Transformer3DModel reads their raw weights).
FP8_SKIP = ("conv_in", "conv_out", "time_embedding", "proj_in", "proj_out")
# The blocks that repeat through the U-Net (and hold nearly all its compute).
COMPILED_BLOCKS = (ResnetBlock3D, Transformer3DModel, TemporalModule3D)


# -- fp8 weight storage ----------------------------------------------------------------------------


class _Fp8Layer:
    """Mixed into a Linear/convolution class: the weight is read back as ``weight * scale``
    in the compute dtype. The power-of-two scale makes that exact in any float dtype."""

    weight: nn.Parameter
    weight_scale: torch.Tensor
    compute_dtype: torch.dtype

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight.to(self.compute_dtype) * self.weight_scale


class _Fp8Linear(_Fp8Layer):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight(), self.bias)  # type: ignore[attr-defined]


class _Fp8Conv(_Fp8Layer):
    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        return super()._conv_forward(x, self.dequantized_weight(), bias)  # type: ignore[misc]


_FP8_CLASSES: dict[type, type] = {}


def _fp8_class(cls: type) -> type:
    """``cls`` with fp8 weights (a subclass, so ``isinstance`` checks still hold)."""
    if cls not in _FP8_CLASSES:
        mixin = _Fp8Linear if issubclass(cls, nn.Linear) else _Fp8Conv
        _FP8_CLASSES[cls] = type(f"Fp8{cls.__name__}", (mixin, cls), {"__module__": __name__})
    return _FP8_CLASSES[cls]


def _quantize(weight: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(fp8 tensor, power-of-two scale) with ``fp8 * scale ~= weight``, the largest entry near 448."""
    amax = weight.detach().abs().max().float().item()
    scale = 2.0 ** math.ceil(math.log2(amax / _FP8_MAX)) if amax > 0 else 1.0
    return (weight.detach().float() / scale).clamp(-_FP8_MAX, _FP8_MAX).to(FP8), scale


def is_fp8(model: nn.Module) -> bool:
    """Whether :func:`enable_fp8_weights` has converted ``model``."""
    return any(isinstance(m, _Fp8Layer) for m in model.modules())


def _state_dict_hook(module: _Fp8Layer, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    # The official key holds the weight as the layer computes with it.
    if isinstance(state_dict.get(prefix + "weight"), torch.Tensor):
        state_dict[prefix + "weight"] = module.dequantized_weight().detach()


def _load_hook(module: _Fp8Layer, state_dict: dict, prefix: str, *args: Any) -> None:
    # Full-width official weights are quantised on the way in (load_state_dict copies the dict).
    weight = state_dict.get(prefix + "weight")
    if isinstance(weight, torch.Tensor) and weight.dtype != FP8:
        state_dict[prefix + "weight"], scale = _quantize(weight)
        module.weight_scale.fill_(scale)


def enable_fp8_weights(model: nn.Module, compute_dtype: Optional[torch.dtype] = None,
                       skip: tuple[str, ...] = FP8_SKIP) -> int:
    """Store ``model``'s Linear and convolution weights as fp8, in place; returns how many
    layers were converted. Layers whose qualified name has a part in ``skip`` are left
    alone. ``compute_dtype`` (default: the first parameter's dtype) is what they run in."""
    if compute_dtype is None:
        compute_dtype = next(model.parameters()).dtype
    converted = 0
    for name, module in model.named_modules():
        if (not isinstance(module, (nn.Linear, nn.Conv2d, nn.Conv3d)) or isinstance(module, _Fp8Layer)
                or any(part in skip for part in name.split("."))):
            continue
        weight, scale = _quantize(module.weight)
        module.weight.data = weight  # the same Parameter: its state-dict name stays
        if module.bias is not None:
            module.bias.data = module.bias.data.to(compute_dtype)
        module.register_buffer("weight_scale", torch.tensor(scale, dtype=compute_dtype, device=weight.device),
                               persistent=False)
        module.compute_dtype = compute_dtype
        module.__class__ = _fp8_class(type(module))
        module.register_state_dict_post_hook(_state_dict_hook)
        module.register_load_state_dict_pre_hook(_load_hook)
        converted += 1
    logger.info("fp8 weights: %d layers, computing in %s", converted, compute_dtype)
    return converted


def weight_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s parameters and buffers (shared ones counted once)."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


# -- group offloading ------------------------------------------------------------------------------


def _top_level_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's children, lists expanded into their entries."""
    blocks: list[nn.Module] = []
    for child in model.children():
        blocks.extend(child if isinstance(child, nn.ModuleList) else [child])
    return blocks


class _OffloadGroup:
    """One block's tensors: host copies, swapped onto the device around its forward."""

    def __init__(self, tensors: list[torch.Tensor], device: torch.device):
        self.tensors, self.device = tensors, device
        pin = device.type == "cuda"
        self.host = [t.data.to("cpu").pin_memory() if pin else t.data.to("cpu") for t in tensors]
        self.offload()

    def onload(self, *_: Any) -> None:
        for t, h in zip(self.tensors, self.host):
            t.data = h.to(self.device, non_blocking=True)  # ordered on the stream before the block's kernels

    def offload(self, *_: Any) -> None:
        for t, h in zip(self.tensors, self.host):
            t.data = h  # the device copy is freed; the weights did not change


def _offload_groups(model: nn.Module) -> list[tuple[nn.Module, list[torch.Tensor]]]:
    """(block, the tensors only it holds) for each top-level block that offloading moves.
    Tensors shared between blocks (the rotary frequencies) and blocks that never run on
    their own stay on the device."""
    blocks = _top_level_blocks(model)
    owners: dict[int, set[int]] = {}
    for block in blocks:
        for t in (*block.parameters(), *block.buffers()):
            owners.setdefault(id(t), set()).add(id(block))
    groups = []
    for block in blocks:
        tensors = list({id(t): t for t in (*block.parameters(), *block.buffers())
                        if len(owners[id(t)]) == 1}.values())
        if tensors and type(block).forward is not nn.Module.forward:  # never called: hooks would not run
            groups.append((block, tensors))
    return groups


def offload_device_bytes(model: nn.Module) -> int:
    """The most weight bytes of ``model`` on the device at once with group offloading: what
    stays there plus the largest block (a block's copy is freed before the next one's)."""
    groups = _offload_groups(model)
    moved = {id(t) for _, tensors in groups for t in tensors}
    largest = max((sum(t.numel() * t.element_size() for t in tensors) for _, tensors in groups), default=0)
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return largest + sum(t.numel() * t.element_size() for i, t in tensors.items() if i not in moved)


def enable_group_offload(model: nn.Module, device: torch.device) -> int:
    """Keep each top-level block of ``model`` in host memory, moved to ``device`` for its
    forward (pre/post hooks); returns the number of blocks. Tensors shared between blocks
    and blocks that never run on their own stay on ``device``."""
    disable_group_offload(model)
    handles = []
    for block, tensors in _offload_groups(model):
        group = _OffloadGroup(tensors, device)
        handles += [block.register_forward_pre_hook(group.onload), block.register_forward_hook(group.offload)]
    model._offload_handles = handles  # type: ignore[assignment]
    logger.info("offload: %d U-Net blocks kept in host memory, moved to %s when they run", len(handles) // 2, device)
    return len(handles) // 2


def disable_group_offload(model: nn.Module, device: Optional[torch.device] = None) -> None:
    """Remove :func:`enable_group_offload`'s hooks; the tensors go to ``device`` (if given)."""
    for handle in getattr(model, "_offload_handles", ()):
        handle.remove()
    model._offload_handles = []  # type: ignore[assignment]
    if device is not None:
        model.to(device)


# -- regional compilation -------------------------------------------------------------------------


def inductor_cache_dir() -> Path:
    """Where compiled kernels are cached between runs: ``$TORCHINDUCTOR_CACHE_DIR`` when set,
    else ``<user cache>/vs-uav/torchinductor`` (set into the environment for inductor)."""
    if not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        from platformdirs import user_cache_dir

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(user_cache_dir("vs-uav")) / "torchinductor")
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def _outermost(model: nn.Module, kinds: tuple[type, ...]) -> list[nn.Module]:
    found: list[nn.Module] = []
    for child in model.children():
        found.extend([child] if isinstance(child, kinds) else _outermost(child, kinds))
    return found


def compile_blocks(model: nn.Module, **options: Any) -> int:
    """``torch.compile`` each outermost :data:`COMPILED_BLOCKS` instance of ``model`` in
    place (``nn.Module.compile``; compiled on first call); returns how many. ``options``
    go to ``torch.compile``."""
    cache = inductor_cache_dir()
    blocks = _outermost(model, COMPILED_BLOCKS)
    # One code object per block class, recompiled per distinct shape set: allow them all.
    limit = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = max(limit, len(blocks))
    for block in blocks:
        block.compile(**options)
    logger.info("compile: %d U-Net blocks (cache %s); the first chunk compiles them", len(blocks), cache)
    return len(blocks)


def uncompile_blocks(model: nn.Module) -> None:
    """Undo :func:`compile_blocks` (the blocks run eagerly again)."""
    for block in _outermost(model, COMPILED_BLOCKS):
        block._compiled_call_impl = None
