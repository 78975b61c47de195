"""The memory budget (max_memory): the plan's arithmetic, budgeted renders, and the retry
after a real out-of-memory error (address-space limit on the CPU, memory fraction on CUDA)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import ATOL, MODEL_DIR, REPO

from vs_uav.core.memory import GIB, MIN_TILE, MemoryPlan, plan_memory, smaller_plan
from vs_uav.core.tiling import temporal_windows
from vs_uav.engine.pipeline import UpscalePipeline
from vs_uav.settings import UpscaleSettings

MIB = 1 << 20
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def pipe():
    return UpscalePipeline.from_pretrained(MODEL_DIR, vae="3d")


def clip(t: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((1, 3, t, h, w), generator=g) * 2 - 1


# -- the arithmetic ------------------------------------------------------------------------------

PLAN = dict(weights=100 * MIB, held=1000, unet=20_000, vae=30_000)


def test_whole_frames_and_windows_when_they_fit():
    room = 30_000 * 64 * 64 * 3  # three windows' U-Net activations fit next to the decode
    plan = plan_memory(64, 64, budget=PLAN["weights"] + 1000 * 64 * 64 + room, max_windows=8, **PLAN)
    assert (plan.tile, plan.overlap) == (0, 0)
    assert plan.windows == room // (20_000 * 64 * 64) == 4
    assert plan_memory(64, 64, budget=8 * GIB, max_windows=5, **PLAN).windows == 5  # never more than asked
    assert plan_memory(64, 64, budget=8 * GIB, **PLAN).windows == 1


def test_the_largest_tile_that_fits():
    h, w = 300, 500
    for budget in (300 * MIB, 600 * MIB, 1 * GIB):
        plan = plan_memory(h, w, budget=budget, tile_overlap=16, **PLAN)
        room = budget - PLAN["weights"] - PLAN["held"] * h * w
        assert plan.tile % 8 == 0 and MIN_TILE <= plan.tile < w
        assert 30_000 * plan.tile ** 2 <= room < 30_000 * (plan.tile + 8) ** 2
        assert plan.overlap == 16 and plan.windows >= 1
    # Resident weights count against the budget.
    assert plan_memory(h, w, budget=600 * MIB, **{**PLAN, "weights": 200 * MIB}).tile < \
        plan_memory(h, w, budget=600 * MIB, **PLAN).tile


def test_an_explicit_tile_and_frames_smaller_than_it():
    assert plan_memory(128, 96, budget=8 * GIB, tile_size=64, tile_overlap=40, **PLAN).tile == 64
    assert plan_memory(128, 96, budget=8 * GIB, tile_size=64, tile_overlap=40, **PLAN).overlap == 32
    assert plan_memory(48, 40, budget=8 * GIB, tile_size=64, **PLAN).tile == 0


def test_a_budget_too_small_names_max_memory_and_the_least_that_works():
    with pytest.raises(ValueError, match=r"^max_memory=0\.1 is too small for 500x300 latents .*; accepted: "
                                         r"max_memory >= ([0-9.]+) \(GiB\)") as e:
        plan_memory(300, 500, budget=GIB // 10, setting="max_memory=0.1", **PLAN)
    assert "\n" not in str(e.value)
    least = float(re.search(r">= ([0-9.]+)", str(e.value)).group(1))
    assert plan_memory(300, 500, budget=int(least * GIB), **PLAN).tile == MIN_TILE
    with pytest.raises(ValueError):
        plan_memory(300, 500, budget=int((least - 0.01) * GIB), **PLAN)


def test_smaller_plans_halve_the_tile_down_to_the_smallest():
    plan = MemoryPlan(budget=GIB, weights=0, tile=0, overlap=0, windows=4)
    tiles = []
    while (plan := smaller_plan(plan, 200, 136, tile_overlap=40)) is not None:
        tiles.append((plan.tile, plan.overlap, plan.windows))
    assert tiles == [(96, 40, 1), (48, 24, 1)]  # 200 // 2 = 100 -> 96; 48 // 2 = 24 < 32: done


# -- windows at once -----------------------------------------------------------------------------

@pytest.mark.parametrize("frames, tile", [(20, (0, 0)), (14, (0, 0)), (14, (16, 8))])
def test_windows_stacked_in_one_call_match_one_at_a_time(pipe, frames, tile):
    # Guidance (two rows per window) and, for 14 frames, the official repeated last window.
    g = torch.Generator().manual_seed(1)
    latents, image = torch.randn(1, 4, frames, 32, 32, generator=g), torch.randn(1, 3, frames, 32, 32, generator=g)
    embeds = pipe.model.prompt_encoder.encode("a koala", "blur", guidance=True)
    labels = torch.full((2,), 20, dtype=torch.long)
    windows = temporal_windows(frames)
    one = pipe._model_output(latents, image, 500, embeds, labels, tile, windows)
    for at_once in (2, 3):
        many = pipe._model_output(latents, image, 500, embeds, labels, tile, windows, None, at_once)
        assert (many - one).abs().max().item() <= 1e-5


def test_windows_at_once_only_on_cuda(pipe):
    # On the CPU the plan stacks nothing whatever the budget: results never depend on free memory.
    assert pipe.memory_plan(64, 64, UpscaleSettings(max_memory=64.0)).windows == 1


# -- a budgeted render on the CPU ----------------------------------------------------------------

def test_a_budget_that_tiles_renders_the_same_frames_as_that_explicit_tile(pipe, caplog):
    video = clip(16, 64, 64)
    kw = dict(steps=2, guidance_scale=1.0, chunk_size=8, lookahead=0, seed=3)
    with pytest.raises(ValueError, match=r"^max_memory=0\.001 is too small for 64x64 latents") as e:
        pipe(video, max_memory=0.001, **kw)
    least = float(re.search(r"max_memory >= ([0-9.]+)", str(e.value)).group(1))
    caplog.set_level(logging.INFO, logger="vs_uav.engine.pipeline")
    budgeted = pipe(video, max_memory=least, **kw)  # two chunks
    plan = pipe.memory_plan(64, 64, UpscaleSettings(max_memory=least, **kw))
    assert 0 < plan.tile < 64 and plan.windows == 1
    said = [r.getMessage() for r in caplog.records if "memory budget" in r.getMessage()]
    assert said == [plan.describe(64, 64)] and f"{least:.2f} GiB" in said[0]  # once per render
    explicit = pipe(video, tile_size=plan.tile, **kw)
    assert torch.equal(budgeted.frames, explicit.frames) and torch.equal(budgeted.latents, explicit.latents)


# -- out of memory: retried with smaller tiles ---------------------------------------------------

# The render in a process whose address space ends 150 MiB above what it uses after a small
# warm-up render: untiled, the U-Net's activations (~280 MiB) cannot be allocated; in 64x64
# tiles (~70 MiB) they can, but the decode's (~220 MiB) cannot; in 32x32 tiles it can.
_LIMITED_RENDER = textwrap.dedent("""
    import logging, resource, sys, torch
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    from vs_uav.engine.pipeline import UpscalePipeline
    from vs_uav.settings import UpscaleSettings
    pipe = UpscalePipeline.from_pretrained(sys.argv[1])
    g = torch.Generator().manual_seed(0)
    video = torch.rand((1, 3, 3, 128, 128), generator=g) * 2 - 1
    settings = UpscaleSettings(steps=1, chunk_size=8, lookahead=0, tile_overlap=8)
    pipe(video[..., :16, :16], settings)
    vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + (150 << 20), resource.RLIM_INFINITY))
    out = pipe(video, settings)
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    torch.save({"frames": out.frames, "latents": out.latents}, sys.argv[2])
""")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux's RLIMIT_AS and /proc")
def test_a_real_out_of_memory_error_is_retried_with_smaller_tiles(pipe, tmp_path):
    result = tmp_path / "out.pt"
    # Large blocks from mmap, returned on free: the address space follows what is allocated.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", _LIMITED_RENDER, str(MODEL_DIR), str(result)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    warnings = [line for line in run.stderr.splitlines() if line.startswith("WARNING out of memory")]
    assert len(warnings) == 2, run.stderr[-3000:]
    assert "can't allocate memory" in warnings[0] and "as 64x64 tiles (overlap 8)" in warnings[0]
    assert "as 32x32 tiles (overlap 8)" in warnings[1]
    # The U-Net ran in 64x64 tiles (the retried chunk from its inputs), the decode in 32x32.
    got = torch.load(result)
    video = torch.rand((1, 3, 3, 128, 128), generator=torch.Generator().manual_seed(0)) * 2 - 1
    settings = UpscaleSettings(steps=1, chunk_size=8, lookahead=0, tile_overlap=8)
    latents = pipe(video, settings, tile_size=64).latents
    frames = pipe.decode(latents, video, settings.replace(tile_size=32))
    assert (got["latents"] - latents).abs().max().item() <= ATOL
    assert (got["frames"] - frames).abs().max().item() <= ATOL


# -- on CUDA -------------------------------------------------------------------------------------

@pytest.mark.cuda
@needs_cuda
def test_cuda_peak_memory_stays_within_max_memory():
    pipe = UpscalePipeline.from_pretrained(MODEL_DIR, device="cuda", dtype="float32")
    video = clip(16, 256, 256)
    settings = UpscaleSettings(steps=2, chunk_size=8, lookahead=0, max_memory=1.5)
    plan = pipe.memory_plan(256, 256, settings)
    assert 0 < plan.tile < 256  # the budget is what bounds this render
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    out = pipe(video, settings)
    peak = torch.cuda.max_memory_allocated()
    assert peak <= settings.max_memory * GIB, f"peak {peak / GIB:.2f} GiB, plan {plan}"
    assert torch.isfinite(out.frames).all()


@pytest.mark.cuda
@needs_cuda
def test_cuda_out_of_memory_is_retried_with_smaller_tiles(caplog):
    pipe = UpscalePipeline.from_pretrained(MODEL_DIR, device="cuda", dtype="float32")
    video = clip(8, 256, 256)
    settings = UpscaleSettings(steps=1, chunk_size=8, lookahead=0)
    caplog.set_level(logging.INFO, logger="vs_uav.engine.pipeline")
    torch.cuda.empty_cache()
    # The allocator may hold 1 GiB more than the weights: untiled, the U-Net needs ~3 GiB. The
    # plan (max_memory=0) reads the free memory, which knows nothing of the fraction.
    total = torch.cuda.get_device_properties(pipe.device).total_memory
    torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_allocated() + GIB) / total)
    try:
        out = pipe(video, settings)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and all("out of memory" in w and "retrying the chunk" in w for w in warnings)
    assert 0 < pipe.memory_plan(256, 256, settings).tile < 256
    assert out.frames.shape == (1, 3, 8, 1024, 1024) and torch.isfinite(out.frames).all()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc/meminfo")
def test_the_cpu_budget_counts_the_page_cache_as_available():
    """max_memory=0 on the CPU plans with MemAvailable, not free pages: on a machine whose page
    cache holds the files it read (a long render's inputs), free pages alone are a few hundred
    MiB, and a render that fits was refused (seen in CI: "0.28 GiB free" on a 24 GiB machine)."""
    from vs_uav.engine.pipeline import available_ram

    info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in open("/proc/meminfo")}
    got = available_ram()
    assert abs(got - info["MemAvailable"]) < 256 << 20 and got >= info["MemFree"] - (256 << 20)
