"""The pipeline, the chunk driver's decode overlap and the filter on a CUDA GPU.

Marked ``cuda``: skipped where ``torch.cuda.is_available()`` is false (``bash bench/device.sh``
runs them on a GPU machine). One test checks the overlap's chunk logic on the CPU too.
"""

from __future__ import annotations

import pytest
import torch
from conftest import MODEL_DIR

from vs_uav.engine.driver import ChunkDriver
from vs_uav.engine.pipeline import UpscalePipeline
from vs_uav.settings import UpscaleSettings

cuda = pytest.mark.cuda
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason=f"needs a CUDA GPU: torch.cuda.is_available() is False (torch {torch.__version__})")

# Three chunks (8, 8, 4 frames) with look-ahead, guidance and propagation at step 1.
KW = dict(prompt="a koala", steps=3, guidance_scale=4.0, noise_level=100, seed=7, chunk_size=8, lookahead=4,
          propagation_steps=[1])
FRAMES, HEIGHT, WIDTH = 20, 16, 24

# Tolerances against the float32 CPU result, in units of the dtype's machine epsilon (float16
# 2**-10, bfloat16 2**-7): the error of a reduced-precision U-Net grows with its rounding unit.
# Measured on the CPU (this tiny model, these settings): mean |error| about 1.5 eps for the latents
# and the frames, max about 23 eps for the frames (the VAE amplifies some pixels). The bounds leave
# room for other kernels (cuBLAS/cuDNN, TF32 convolutions in the float32 VAE) yet fail for a wrong
# result, whose mean error is of order 0.5.
MEAN_EPS, MAX_EPS = 4, 64


def moving_scene(t: int, h: int, w: int) -> torch.Tensor:
    """A smooth textured scene translating by about a pixel per frame, in [-1, 1]."""
    g = torch.Generator().manual_seed(0)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, h // 4 + 4, w // 4 + 4, generator=g), scale_factor=4,
                                           mode="bicubic", align_corners=False)
    frames = [torch.roll(base, shifts=(i, i // 2), dims=(2, 3))[..., :h, :w] for i in range(t)]
    return (torch.stack(frames, 2) * 2 - 1).clamp(-1, 1)


def shift_flows(t: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Given flows (a pixel down per frame): propagation runs on the GPU without OpenCV."""
    forward = torch.zeros(1, 2, t - 1, h, w)
    forward[:, 1] = 1.0
    return forward, -forward


@pytest.fixture(scope="module")
def video() -> torch.Tensor:
    return moving_scene(FRAMES, HEIGHT, WIDTH)


@pytest.fixture(scope="module")
def reference(video):
    """The float32 CPU result every GPU run is held against."""
    pipe = UpscalePipeline.from_pretrained(MODEL_DIR, flow="dis")
    return pipe(video, UpscaleSettings(**KW), flows=shift_flows(FRAMES, HEIGHT, WIDTH))


def _frames(driver: ChunkDriver) -> tuple[torch.Tensor, torch.Tensor]:
    outputs = [out for _, out in driver]
    return torch.cat([o.frames for o in outputs], 2), torch.cat([o.latents for o in outputs], 2)


def _driver(pipe: UpscalePipeline, video: torch.Tensor, overlap: bool, **changes) -> ChunkDriver:
    driver = ChunkDriver(pipe, UpscaleSettings(**{**KW, "propagation_steps": [], **changes}), video.shape[2],
                         lambda a, b: (video[:, :, a:b], []))
    driver.overlap = overlap
    return driver


def test_overlap_chunk_logic_on_the_cpu(video):
    """The overlap's bookkeeping (decode ahead on a side thread, in order or not) gives the
    sequential frames; on the CPU it is off unless switched on, as here."""
    pipe = UpscalePipeline.from_pretrained(MODEL_DIR, flow="dis")
    video = video[:, :, :17, :8, :8]  # chunks of 8, 8 and 1 frames, small and quick
    assert not ChunkDriver(pipe, UpscaleSettings(**KW), 17, lambda a, b: (video[:, :, a:b], [])).overlap
    quick = dict(steps=1, guidance_scale=1.0, lookahead=2)
    frames, latents = _frames(_driver(pipe, video, overlap=False, **quick))
    ahead = _driver(pipe, video, overlap=True, **quick)
    got, got_latents = _frames(ahead)
    assert torch.equal(got_latents, latents) and torch.equal(got, frames)
    assert ahead._side is not None and not ahead._decoding  # every decode ahead was used
    backwards = _driver(pipe, video, overlap=True, **quick)
    for k in reversed(range(len(backwards.bounds))):
        a, b = backwards.bounds[k]
        assert torch.equal(backwards.output(k).frames, frames[:, :, a:b])


@cuda
@needs_cuda
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_on_cuda_matches_float32_on_the_cpu(video, reference, dtype):
    if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name()} does not support bfloat16")
    pipe = UpscalePipeline.from_pretrained(MODEL_DIR, device="cuda", dtype=dtype, flow="dis")
    out = pipe(video, UpscaleSettings(**KW), flows=shift_flows(FRAMES, HEIGHT, WIDTH))
    eps = torch.finfo(getattr(torch, dtype)).eps
    for name, got, ref in (("latents", out.latents, reference.latents), ("frames", out.frames, reference.frames)):
        assert got.shape == ref.shape and got.device.type == "cpu"
        assert torch.isfinite(got).all(), f"{dtype} {name}: NaN or infinite values"
        err = (got.double() - ref.double()).abs()
        assert err.mean() <= MEAN_EPS * eps, f"{dtype} {name}: mean error {err.mean():.3g} > {MEAN_EPS} eps"
        assert err.max() <= MAX_EPS * eps, f"{dtype} {name}: max error {err.max():.3g} > {MAX_EPS} eps"


@cuda
@needs_cuda
def test_float16_decode_is_finite(video):
    """The VAE stays float32 under a float16 U-Net (float16 overflows in its up blocks): the
    decode of float16 latents, large ones included, has no NaN or inf."""
    pipe = UpscalePipeline.from_pretrained(MODEL_DIR, device="cuda", dtype="float16", flow="dis")
    assert next(pipe.model.vae.parameters()).dtype == torch.float32
    settings = UpscaleSettings(**{**KW, "propagation_steps": []})
    out = pipe(video, settings)
    assert torch.isfinite(out.frames).all() and torch.isfinite(out.latents).all()
    loud = (out.latents * 8).half()  # far outside the usual latent range, in float16
    frames = pipe.decode(loud, video, settings)
    assert frames.device.type == "cpu" and frames.is_pinned()  # copied back through pinned memory
    assert torch.isfinite(frames).all()


@cuda
@needs_cuda
def test_overlap_gives_the_sequential_frames(video):
    pipe = UpscalePipeline.from_pretrained(MODEL_DIR, device="cuda", dtype="float16", flow="dis")
    frames, latents = _frames(_driver(pipe, video, overlap=False))
    driver = _driver(pipe, video, overlap=True)
    assert ChunkDriver(pipe, driver.settings, FRAMES, driver.source).overlap  # on by default on CUDA
    got, got_latents = _frames(driver)
    assert driver._side is not None and driver._side[1] is not None  # decoded on the side stream
    # Same kernels, other stream: equal up to cuBLAS/cuDNN workspace effects; a chunk mixed up or
    # read before its decode finished would differ by O(1).
    torch.testing.assert_close(got_latents, latents, atol=1e-4, rtol=0)
    torch.testing.assert_close(got, frames, atol=1e-4, rtol=0)
    assert not ChunkDriver(pipe, driver.settings.replace(max_memory=8), FRAMES, driver.source).overlap


@cuda
@needs_cuda
def test_filter_on_cuda():
    pytest.importorskip("vapoursynth", reason="VapourSynth is not installed")
    pytest.importorskip("cv2", reason="OpenCV (the filter test's DIS flow) is not installed")
    import numpy as np
    from test_filter import KW as FILTER_KW
    from test_filter import _video, frames_of, source

    from vs_uav.engine.cache import get_engine
    from vs_uav.vsfilter.upscale import upscale

    clip = source()
    out = frames_of(upscale(clip, **{**FILTER_KW, "device": "cuda"}), range(clip.num_frames))
    engine, _ = get_engine(MODEL_DIR, "3d", "cpu", "float32", "dis")
    ref = ((engine(_video(clip), UpscaleSettings(**{**FILTER_KW, "device": "cpu"})).frames[0] + 1) * 0.5).clamp(0, 1)
    eps = torch.finfo(torch.float16).eps  # device='cuda' runs the U-Net in float16 by default
    err = np.abs(np.stack([out[n] for n in range(clip.num_frames)], 1) - ref.numpy())
    assert np.isfinite(err).all()
    assert err.mean() <= MEAN_EPS * eps and err.max() <= MAX_EPS * eps, (err.mean(), err.max())
