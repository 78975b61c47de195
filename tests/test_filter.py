"""vs_uav.upscale (the implementation behind core.uav.Upscale) on real VapourSynth."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import vapoursynth as vs
from conftest import MODEL_DIR, copy_model
from setting_errors import BAD_SETTINGS, row_id

from vs_uav.vsfilter.upscale import upscale

core = vs.core
KW = dict(model=str(MODEL_DIR), prompt="a koala", steps=2, guidance_scale=4.0, chunk_size=8, propagation_steps=[1],
          flow="dis")


def source(frames: int = 18, width: int = 24, height: int = 16, fmt=vs.RGBS) -> vs.VideoNode:
    """A small moving synthetic clip with real frame props."""
    g = np.random.default_rng(0)
    base = g.random((3, height + frames, width + frames), dtype=np.float32)
    blank = core.std.BlankClip(width=width, height=height, format=vs.RGBS, length=frames, fpsnum=24, fpsden=1)

    def paint(n: int, f: vs.VideoFrame) -> vs.VideoFrame:
        out = f.copy()
        for p in range(3):
            np.copyto(np.asarray(out[p]), base[p, n:n + height, n:n + width])
        return out

    clip = core.std.ModifyFrame(blank, blank, paint)
    return clip if fmt == vs.RGBS else core.resize.Bicubic(clip, format=fmt, matrix_s="709")


def frames_of(clip: vs.VideoNode, order) -> dict[int, np.ndarray]:
    return {n: np.stack([np.asarray(clip.get_frame(n)[p]).copy() for p in range(clip.format.num_planes)])
            for n in order}


def test_output_format_size_props():
    clip = source(fmt=vs.YUV420P10)
    out = upscale(clip, **KW)
    assert (out.width, out.height, out.num_frames) == (96, 64, 18)
    assert out.format.id == vs.YUV420P10 and out.fps == clip.fps
    props = out.get_frame(9).props
    assert props["_UAVChunk"] == 1 and props["_UAVSteps"] == 2 and props["_Matrix"] == vs.MATRIX_BT709


def test_same_frames_in_any_order_and_from_many_threads():
    clip = source()
    in_order = frames_of(upscale(clip, **KW), range(clip.num_frames))
    reverse = frames_of(upscale(clip, **KW), reversed(range(clip.num_frames)))
    assert all(np.array_equal(in_order[n], reverse[n]) for n in in_order)
    out = upscale(clip, **KW)
    order = list(range(clip.num_frames)) * 2
    random.Random(1).shuffle(order)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda n: (n, np.asarray(out.get_frame(n)[0]).copy()), order))
    assert all(np.array_equal(in_order[n][0], plane) for n, plane in got)


def test_matches_the_pipeline_exactly():
    from vs_uav.engine.cache import get_engine
    from vs_uav.settings import UpscaleSettings

    clip = source()
    out = frames_of(upscale(clip, **KW), range(clip.num_frames))
    engine, _ = get_engine(MODEL_DIR, "3d", "cpu", "float32", "dis")
    # The same settings object drives the filter and the pipeline: no renaming on the way.
    ref = engine(_video(clip), UpscaleSettings(**KW))
    expected = ((ref.frames[0] + 1) * 0.5).clamp(0, 1).numpy()
    for n in range(clip.num_frames):
        np.testing.assert_array_equal(out[n], expected[:, n])


def test_cache_dir_gives_identical_frames(tmp_path):
    clip = source()
    plain = frames_of(upscale(clip, **KW), range(clip.num_frames))
    first = frames_of(upscale(clip, cache_dir=str(tmp_path), **KW), range(clip.num_frames))
    assert len(list(tmp_path.rglob("state.safetensors"))) == 2
    # A fresh filter reads every chunk back: same bytes, no recomputation needed.
    again = frames_of(upscale(clip, cache_dir=str(tmp_path), **KW), reversed(range(clip.num_frames)))
    assert all(np.array_equal(plain[n], first[n]) and np.array_equal(plain[n], again[n]) for n in plain)


def _video(clip: vs.VideoNode) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.stack([np.asarray(clip.get_frame(n)[p]) for p in range(3)])
                                      for n in range(clip.num_frames)], axis=1)[None]) * 2 - 1


def test_scene_change_starts_fresh():
    from vs_uav.engine.cache import get_engine
    from vs_uav.settings import UpscaleSettings

    clip = source()
    with_cut = clip[:10] + core.std.SetFrameProps(clip[10], _SceneChangePrev=1) + clip[11:]
    a = frames_of(upscale(with_cut, **KW), range(18))
    b = frames_of(upscale(clip, **KW), range(18))
    c = frames_of(upscale(with_cut, scene_change=False, **KW), range(18))
    # Chunks before the cut are unchanged, but for their look-ahead, which stops at the cut.
    a0 = frames_of(upscale(with_cut, lookahead=0, **KW), range(8))
    b0 = frames_of(upscale(clip, lookahead=0, **KW), range(8))
    assert all(np.array_equal(a0[n], b0[n]) for n in range(8))
    assert all(np.array_equal(b[n], c[n]) for n in b)  # scene_change=False ignores the prop
    # After the cut the frames are a cold start: nothing carried across.
    engine, _ = get_engine(MODEL_DIR, "3d", "cpu", "float32", "dis")
    cold, _ = engine.upscale_chunk(_video(clip)[:, :, 10:], 10, UpscaleSettings(**KW))
    expected = ((cold.frames[0] + 1) * 0.5).clamp(0, 1).numpy()
    for n in range(10, 18):
        np.testing.assert_array_equal(a[n], expected[:, n - 10])
    assert not np.array_equal(a[12], b[12])


BAD = [
    (lambda: upscale("clip", **KW), "uav.Upscale: clip must be a video clip"),
    (lambda: upscale(core.std.Splice([source(4), source(4, fmt=vs.YUV444P8)], mismatch=True), **KW),
     "uav.Upscale: clip has a variable format"),
    (lambda: upscale(core.std.Splice([source(4), source(4, width=32)], mismatch=True), **KW),
     "uav.Upscale: clip has a variable frame size"),
    (lambda: upscale(source(4, width=6), **KW), r"uav.Upscale: clip is 6x16; accepted: at least 8x8"),
    (lambda: upscale(source(4), **{**KW, "model": "/nonexistent/uav"}),
     r"uav.Upscale: /nonexistent/uav: model folder not found; run `uav download`"),
    (lambda: upscale(source(4), device="cuda", **KW), r"uav.Upscale: device='cuda' but CUDA is not available"),
    (lambda: upscale(source(4), dtype="float16", device="cpu", **KW),
     r"uav.Upscale: dtype='float16' is not supported on the CPU; accepted: 'float32', 'bfloat16'"),
]


@pytest.mark.parametrize("call, message", BAD, ids=[m.split(": ")[1][:24] for _, m in BAD])
def test_bad_input_gets_one_clear_line(call, message):
    with pytest.raises(vs.Error, match=message) as info:
        call()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs, message", BAD_SETTINGS, ids=[row_id(r) for r in BAD_SETTINGS])
def test_the_settings_tables_refusals_with_the_filters_prefix(kwargs, message):
    """The settings model's whole table through vs_uav.upscale: its line after the prefix,
    before the model loads."""
    with pytest.raises(vs.Error) as e:
        upscale(source(4), model=str(MODEL_DIR), **kwargs)
    assert str(e.value).startswith(f"uav.Upscale: {message}") and "\n" not in str(e.value), str(e.value)


def test_model_folder_missing_a_file(tmp_path):
    import shutil

    dst = tmp_path / "m"
    shutil.copytree(MODEL_DIR, dst)
    (dst / "unet" / "unet_video.bin").chmod(0o644)
    (dst / "unet" / "unet_video.bin").unlink()
    with pytest.raises(vs.Error, match=r"uav.Upscale: .*unet_video.bin: file is missing; run `uav download`"):
        upscale(source(4), **{**KW, "model": str(dst)})


def test_core_uav_upscale_is_the_same_function():
    clip = source()
    via_plugin = frames_of(core.uav.Upscale(clip, **KW), range(clip.num_frames))
    via_import = frames_of(clip.uav.Upscale(**KW), range(clip.num_frames))
    direct = frames_of(upscale(clip, **KW), range(clip.num_frames))
    assert all(np.array_equal(direct[n], via_plugin[n]) and np.array_equal(direct[n], via_import[n]) for n in direct)


def test_a_model_crash_is_reported_for_the_frames_it_affects(monkeypatch):
    from vs_uav.engine.cache import get_engine

    engine, _ = get_engine(MODEL_DIR, "3d", "cpu", "float32", "dis")
    real = engine.upscale_chunk

    def crash_in_second_chunk(video, start, *args, **kwargs):
        if start >= 8:  # fault injection: the model fails on chunk 2 (e.g. out of memory)
            raise RuntimeError("out of memory while denoising")
        return real(video, start, *args, **kwargs)

    monkeypatch.setattr(engine, "upscale_chunk", crash_in_second_chunk)
    out = upscale(source(), **{**KW, "seed": 7})
    assert out.get_frame(3).props["_UAVChunk"] == 0  # the first chunk is unaffected
    for n in (8, 17):
        with pytest.raises(vs.Error, match=rf"^uav.Upscale: frame {n} failed: RuntimeError: out of memory while "
                                           r"denoising$"):
            out.get_frame(n)
    monkeypatch.undo()  # the failure is not cached: once the model works again, so does the frame
    assert out.get_frame(8).props["_UAVChunk"] == 1


LAZY_VPY = '''
import vapoursynth as vs
core = vs.core
clip = core.std.BlankClip(width=16, height=16, length=3, format=vs.YUV444P8)
core.uav.Upscale(clip, model={model!r}, steps=2, flow="dis").set_output()
'''


@pytest.mark.slow
def test_vspipe_info_loads_no_weights(tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "script.vpy"
    script.write_text(LAZY_VPY.format(model=str(MODEL_DIR)))
    vspipe = Path(sys.executable).with_name("vspipe")
    vspipe = vspipe if vspipe.exists() else Path(shutil.which("vspipe") or "vspipe")
    run = subprocess.run([str(vspipe), "--info", str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Width: 64" in run.stdout
    # The pipeline logs "loaded <folder> ..." when it has read the weights; vspipe shows it.
    assert "loaded" not in run.stderr and "loading the model" not in run.stderr, run.stderr


def _model_copy(tmp_path):
    return copy_model(tmp_path / "m")


def test_bad_input_still_fails_at_creation_without_loading(tmp_path):
    from vs_uav.engine.cache import ENGINES

    folder = _model_copy(tmp_path)
    (folder / "scheduler" / "scheduler_config.json").write_text('{"num_train_timesteps": "many"}')
    with pytest.raises(vs.Error, match=r"^uav.Upscale: .*scheduler_config.json: "):
        upscale(source(4), **{**KW, "model": str(folder)})
    good = _model_copy(tmp_path / "good")
    with pytest.raises(vs.Error, match=r"^uav.Upscale: steps=1000; accepted: an integer in \[1, 999\] for this "):
        upscale(source(4), **{**KW, "model": str(good), "steps": 1000})
    with pytest.raises(vs.Error, match=r"^uav.Upscale: cache_dir='/proc/uav'"):
        upscale(source(4), **{**KW, "model": str(good), "cache_dir": "/proc/uav"})
    assert not [k for k in ENGINES.keys() if k.model_dir in (str(folder.resolve()), str(good.resolve()))]


def test_weights_load_on_the_first_frame_request_and_their_errors_are_frame_errors(tmp_path):
    # (Every other test here renders through the deferred load, test_same_frames_... from 8 threads.)
    from vs_uav.engine.cache import ENGINES

    folder = _model_copy(tmp_path)
    out = upscale(source(4), **{**KW, "model": str(folder)})
    assert not [k for k in ENGINES.keys() if k.model_dir == str(folder.resolve())]
    weights = folder / "unet" / "unet_video.bin"
    weights.chmod(0o644)
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated after the filter was made
    for n in (0, 3):
        with pytest.raises(vs.Error, match=r"^uav.Upscale: .*unet_video.bin: truncated or corrupted weight file "
                                           r"\(.*\); run `uav download` to fetch or repair the model folder$"):
            out.get_frame(n)
