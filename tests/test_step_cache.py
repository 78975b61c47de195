"""Step caching (``cache_interval``, vs_uav.core.step_cache): the shallow/deep split of the real
U-Net on the tiny reference model, the schedule of full steps, tiles, guidance, the filter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import vapoursynth as vs
from conftest import MODEL_DIR

from vs_uav.core.step_cache import DeepFeature, StepCache
from vs_uav.core.tiling import spatial_tiles
from vs_uav.engine.pipeline import UpscalePipeline
from vs_uav.settings import UpscaleSettings

KW = dict(prompt="a koala", steps=4, noise_level=100, seed=3)
# Mean |latent| is ~0.9 here. With guidance 6 and only 4 steps (large jumps between steps) the
# tiny random model's final latents move by a mean of 0.18 at interval 2 and 0.29 at interval 3
# (max 1.0 / 1.7; at 6 steps: 0.07 / 0.12); another seed moves them by ~1.2. The bound catches
# a grossly broken reuse; the split itself is checked bit for bit below.
MAX_MEAN_DEVIATION = 0.5


@pytest.fixture(scope="module")
def pipe():
    return UpscalePipeline.from_pretrained(MODEL_DIR, vae="3d", flow="dis")


def clip(t: int, h: int, w: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand((1, 3, t, h, w), generator=g) * 2 - 1


class Counter:
    """Counts real forward calls of a module with a forward hook."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self.handle = module.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))

    def __enter__(self) -> "Counter":
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def unet_inputs(pipe, batch: int = 2, t: int = 8, h: int = 16, w: int = 24):
    g = torch.Generator().manual_seed(1)
    sample = torch.randn((batch, 4, t, h, w), generator=g)
    low_res = torch.randn((batch, 3, t, h, w), generator=g)
    context = torch.randn((batch, 77, pipe.model.unet.config.cross_attention_dim), generator=g)
    return sample, 500, low_res, context, torch.full((batch,), 100)


def test_a_full_call_stores_the_feature_and_changes_nothing(pipe):
    unet = pipe.model.unet
    args = unet_inputs(pipe)
    slot = DeepFeature()
    with torch.no_grad():
        plain = unet(*args)
        stored = unet(*args, deep_cache=slot)
    assert torch.equal(plain, stored)
    assert slot.feature is not None and slot.feature.shape[2:] == args[0].shape[2:]


def test_the_shallow_path_on_a_full_step_equals_the_full_forward(pipe):
    """Sanity of the split: the stored feature and fresh shallow skips give the full output back."""
    unet = pipe.model.unet
    args = unet_inputs(pipe, h=20, w=12)  # not a multiple of 8: forced upsample sizes
    slot = DeepFeature()
    with torch.no_grad(), Counter(unet.mid_block) as deep, Counter(unet.up_blocks[-1]) as last:
        full = unet(*args, deep_cache=slot)
        slot.reuse = True
        shallow = unet(*args, deep_cache=slot)
    assert (deep.calls, last.calls) == (1, 2)
    assert torch.equal(full, shallow)


def test_a_shallow_call_needs_a_matching_feature(pipe):
    unet = pipe.model.unet
    with torch.no_grad(), pytest.raises(ValueError, match="deep_cache.feature has shape None; accepted"):
        unet(*unet_inputs(pipe), deep_cache=DeepFeature(reuse=True))
    slot = DeepFeature()
    with torch.no_grad():
        unet(*unet_inputs(pipe, t=8), deep_cache=slot)
        slot.reuse = True
        with pytest.raises(ValueError, match=r"accepted: a feature stored by a full call on 2 x 6 frames"):
            unet(*unet_inputs(pipe, t=6), deep_cache=slot)
    with pytest.raises(ValueError, match="cache_interval=0; accepted"):
        StepCache(0)


def latents(pipe, video: torch.Tensor, **changes) -> torch.Tensor:
    """The final latents of one chunk (the U-Net loop; no VAE)."""
    out, _ = pipe.upscale_chunk(video, 0, UpscaleSettings(**dict(KW, **changes)), decode=False)
    return out.latents


def test_interval_one_is_the_default_path_bit_for_bit(pipe):
    video = clip(8, 8, 8)
    assert torch.equal(latents(pipe, video, steps=2), latents(pipe, video, steps=2, cache_interval=1))


@pytest.mark.parametrize("interval", [2, 3])
def test_deep_blocks_run_on_full_steps_only(pipe, interval):
    """11 frames: two U-Net windows; guidance on (batch 2). Full steps: i % interval == 0."""
    video = clip(11, 8, 8)
    unet = pipe.model.unet
    exact = latents(pipe, video)
    with Counter(unet.mid_block) as mid, Counter(unet.down_blocks[1]) as down, Counter(unet.up_blocks[-1]) as top:
        cached = latents(pipe, video, cache_interval=interval)
    full_steps = len(range(0, KW["steps"], interval))
    assert mid.calls == down.calls == 2 * full_steps
    assert top.calls == 2 * KW["steps"]  # the shallow path runs every step
    assert torch.isfinite(cached).all()
    deviation = (cached - exact).abs()
    print(f"interval {interval}: latents max {deviation.max():.3e}, mean {deviation.mean():.3e}")
    assert 0 < deviation.mean() < MAX_MEAN_DEVIATION


def test_tiles_and_no_guidance(pipe):
    """Each spatial tile keeps its own feature; without guidance the batch is 1."""
    video = clip(8, 40, 16)
    unet = pipe.model.unet
    kw = dict(steps=3, guidance_scale=1.0, tile_size=32, tile_overlap=8)
    tiles = len(spatial_tiles(40, 32, 8))
    assert tiles == 2
    exact = latents(pipe, video, **kw)
    with Counter(unet.mid_block) as mid, Counter(unet.up_blocks[-1]) as top:
        cached = latents(pipe, video, cache_interval=2, **kw)
    assert (mid.calls, top.calls) == (tiles * 2, tiles * 3)
    deviation = (cached - exact).abs().mean()
    assert torch.isfinite(cached).all() and 0 < deviation < MAX_MEAN_DEVIATION


def test_chunked_equals_one_chunk_with_caching(pipe):
    """Nothing crosses chunks, yet with a long enough look-ahead the chunks give what one long
    chunk gives: every window sees the same full steps wherever it is computed."""
    video = clip(19, 8, 8)
    kw = dict(KW, steps=2, cache_interval=2)
    one = pipe(video, UpscaleSettings(**dict(kw, chunk_size=32)))
    chunked = pipe(video, UpscaleSettings(**dict(kw, chunk_size=8, lookahead=7 * 2 + 3)))
    assert torch.equal(one.latents, chunked.latents)


def test_the_filter_takes_cache_interval():
    core = vs.core
    src = core.std.BlankClip(width=16, height=8, format=vs.RGBS, length=8, color=[0.2, 0.5, 0.8])
    kw = dict(model=str(MODEL_DIR), prompt="a koala", steps=2, chunk_size=8, lookahead=0)
    exact = core.uav.Upscale(src, **kw)
    cached = core.uav.Upscale(src, cache_interval=2, **kw)
    assert (cached.width, cached.height) == (64, 32)
    a, b = (np.asarray(c.get_frame(3)[0]).copy() for c in (exact, cached))
    assert np.isfinite(b).all() and not np.array_equal(a, b)
    with pytest.raises(vs.Error, match="cache_interval=11; accepted"):
        core.uav.Upscale(src, cache_interval=11, **kw).get_frame(0)
