"""The one chunk driver (vs_uav.engine.driver.ChunkDriver): cache, fingerprint, segments, seek."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import MODEL_DIR
from test_streaming import moving_scene

from vs_uav.engine.driver import ChunkDriver
from vs_uav.engine.pipeline import UpscalePipeline
from vs_uav.engine.state import LATENTS_FILE, STATE_FILE, fingerprint
from vs_uav.settings import UpscaleSettings

KW = dict(prompt="a koala", steps=2, guidance_scale=4.0, noise_level=100, seed=3, chunk_size=8,
          propagation_steps=[1])


@pytest.fixture(scope="module")
def pipe():
    return UpscalePipeline.from_pretrained(MODEL_DIR, vae="3d", flow="dis")


@pytest.fixture(scope="module")
def video():
    return moving_scene(20, 16, 16)


def _driver(pipe, video, settings, cuts=(), **kw):
    def source(a, b):
        return video[:, :, a:b], [c for c in cuts if a <= c < b]

    return ChunkDriver(pipe, settings, video.shape[2], source, **kw)


def _frames(driver) -> torch.Tensor:
    return torch.cat([out.frames for _, out in driver], dim=2)


def test_fingerprint_covers_what_changes_the_frames(pipe):
    base = UpscaleSettings(**KW)
    fp = fingerprint(base, pipe.model_id, pipe.dtype)
    # Where to cache, which device and how to seek never change a frame.
    for same in (dict(cache_dir="/tmp/x"), dict(device="cpu"), dict(seek="fast")):
        assert fingerprint(base.replace(**same), pipe.model_id, pipe.dtype) == fp, same
    for other in (dict(steps=3), dict(seed=4), dict(chunk_size=16), dict(prompt="a cat"), dict(tile_size=32)):
        assert fingerprint(base.replace(**other), pipe.model_id, pipe.dtype) != fp, other
    assert fingerprint(base, pipe.model_id, torch.bfloat16) != fp
    assert fingerprint(base, pipe.model_id + "x", pipe.dtype) != fp


@pytest.mark.parametrize("damage", ["truncate-latents", "truncate-state", "flip-byte", "empty-state"])
def test_damaged_cache_is_moved_aside_and_recomputed(pipe, video, tmp_path, damage, caplog):
    settings = UpscaleSettings(cache_dir=str(tmp_path), **KW)
    plain = _frames(_driver(pipe, video, UpscaleSettings(**KW)))
    assert torch.equal(_frames(_driver(pipe, video, settings)), plain)
    folders = sorted(p for p in tmp_path.rglob("chunk*") if p.is_dir())
    assert len(folders) == 2
    victim = folders[0] / (STATE_FILE if "state" in damage else LATENTS_FILE)
    data = victim.read_bytes()
    if damage.startswith("truncate"):
        victim.write_bytes(data[: len(data) // 2])
    elif damage == "flip-byte":
        victim.write_bytes(data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:])
    else:
        victim.write_bytes(b"")
    with caplog.at_level("WARNING", logger="vs_uav.engine.driver"):
        again = _frames(_driver(pipe, video, settings))
    assert torch.equal(again, plain)  # byte-identical to an uncached render
    assert str(victim) in caplog.text and "computed again" in caplog.text
    aside = [p for p in tmp_path.rglob("*.damaged-*") if p.is_dir()]
    assert len(aside) == 1 and aside[0].name.startswith(folders[0].name)
    assert (folders[0] / STATE_FILE).is_file()  # recomputed and cached again


def test_finished_chunks_are_not_computed_again(pipe, video, tmp_path):
    settings = UpscaleSettings(cache_dir=str(tmp_path), **KW)
    first = _frames(_driver(pipe, video, settings))
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.safetensors")}
    calls = []
    driver = _driver(pipe, video, settings, run=lambda fn, *a, **k: calls.append(fn.__name__) or fn(*a, **k))
    assert torch.equal(_frames(driver), first)
    assert "upscale_chunk" not in calls and calls.count("decode") == 2
    assert stamps == {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.safetensors")}


def test_a_segment_from_a_scene_cut_equals_the_whole_render(pipe, video):
    # The cluster renders segments that start at scene cuts: same chunks, same frames.
    cut = 11
    settings = UpscaleSettings(**KW)
    whole = _frames(_driver(pipe, video, settings, cuts=[cut]))
    tail = _driver(pipe, video, settings, cuts=[cut], start=cut)
    assert tail.bounds == [(11, 20)]  # the whole render's chunk [8, 20), from the cut on
    assert torch.equal(_frames(tail), whole[:, :, cut:])
    head = _driver(pipe, video, settings, cuts=[cut], stop=cut)
    assert torch.equal(_frames(head), whole[:, :, :cut])
    # Without the cut, the frames after it continue the scene before it: they differ.
    assert not torch.equal(_frames(_driver(pipe, video, settings)), whole)


def test_exact_seek_computes_dependencies_fast_seek_starts_cold(pipe, video):
    settings = UpscaleSettings(**KW)
    in_order = _frames(_driver(pipe, video, settings))
    exact = _driver(pipe, video, settings)
    assert torch.equal(exact.output(1).frames, in_order[:, :, 8:20])
    fast = _driver(pipe, video, settings.replace(seek="fast"))
    assert not torch.equal(fast.output(1).frames, in_order[:, :, 8:20])


def test_unwritable_cache_dir_fails_before_any_work(pipe, video, tmp_path):
    if os.geteuid() == 0:  # root writes anywhere: a file where the folder should be fails for everyone
        bad = tmp_path / "file"
        bad.write_text("")
        where = bad / "cache"
    else:
        bad = tmp_path / "ro"
        bad.mkdir(mode=0o500)
        where = bad / "cache"
    calls = []
    with pytest.raises(ValueError, match=r"cache_dir='.*' is not writable .*; accepted: a folder"):
        _driver(pipe, video, UpscaleSettings(cache_dir=str(where), **KW), run=lambda *a, **k: calls.append(a))
    assert calls == []


def test_model_limits_are_checked_once_at_creation(pipe, video):
    pipe.model.max_noise_level, saved = 100, pipe.model.max_noise_level
    try:
        with pytest.raises(ValueError, match=r"noise_level=120; accepted: an integer in \[0, 100\] for this model"):
            _driver(pipe, video, UpscaleSettings(**{**KW, "noise_level": 120}))
    finally:
        pipe.model.max_noise_level = saved


def test_steps_past_the_schedulers_range_are_refused_up_front(pipe, video):
    # 1000 steps of a 1000-timestep schedule with steps_offset 1 would index timestep 1000.
    with pytest.raises(ValueError, match=r"steps=1000; accepted: an integer in \[1, 999\] for this model"):
        _driver(pipe, video, UpscaleSettings(**{**KW, "steps": 1000, "propagation_steps": []}))


def test_chunking_is_exact_with_enough_lookahead(pipe, video):
    """The README's guarantee: without propagation, a look-ahead of 7 x steps + 3 frames makes
    a chunked render identical to one chunk (the official algorithm), scene cuts included;
    without look-ahead the frames near a boundary change."""
    settings = UpscaleSettings(**{**KW, "propagation_steps": []})
    for cuts in ((), (11,)):
        whole = pipe(video, settings.replace(chunk_size=32), scene_cuts=cuts)
        exact = pipe(video, settings.replace(lookahead=7 * settings.steps + 3), scene_cuts=cuts)
        assert torch.equal(whole.frames, exact.frames) and torch.equal(whole.latents, exact.latents)
    none = pipe(video, settings.replace(lookahead=0))
    whole = pipe(video, settings.replace(chunk_size=32))
    assert not torch.equal(whole.frames, none.frames)
