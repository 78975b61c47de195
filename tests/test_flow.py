"""Optical flow: DIS accuracy and signs, RAFT layout/loading/shapes, flow resizing, errors.

No pretrained RAFT weights are available to the tests, so RAFT's accuracy is not
tested here; its arithmetic is checked against torchvision's independent RAFT-large
when torchvision is installed.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from conftest import MANIFESTS
from quality_clips import plane_waves

from vs_uav.core.flow import DisFlow, RaftFlow, estimate_flows, flow_estimator
from vs_uav.core.models.raft import RAFT
from vs_uav.weights.folder import ModelLoadError, default_method, load_raft

SHIFT = (1.5, -0.75)  # (x, y) pixels per frame


def _scene(h: int, w: int, shift: tuple[float, float], seed: int = 0) -> torch.Tensor:
    """A smooth colour texture (sum of random plane waves) translated by ``shift``: (3, H, W) in [-1, 1].

    Evaluated analytically, so a sub-pixel translation is exact.
    """
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    img = plane_waves(xs - shift[0], ys - shift[1], seed, 40, 0.1)
    return (img / img.abs().max() * 0.9).float()


def _translating_video(h: int, w: int, t: int) -> torch.Tensor:
    frames = [_scene(h, w, (k * SHIFT[0], k * SHIFT[1])) for k in range(t)]
    return torch.stack(frames, dim=1)[None]  # (1, 3, T, H, W)


def _median_error(flow: torch.Tensor, target: tuple[float, float], margin: int = 6) -> float:
    inner = flow[:, margin:-margin, margin:-margin]
    return ((inner[0] - target[0]) ** 2 + (inner[1] - target[1]) ** 2).sqrt().median().item()


# --------------------------------------------------------------------------- DIS


def test_dis_recovers_subpixel_translation_both_directions():
    video = _translating_video(48, 64, 3)
    fw, bw = estimate_flows(video, method="dis")
    assert fw.shape == bw.shape == (1, 2, 2, 48, 64)
    assert fw.dtype == bw.dtype == torch.float32
    for i in range(2):
        # Frame i at p is frame i+1 at p + SHIFT: the forward flow is +SHIFT, the backward -SHIFT.
        assert _median_error(fw[0, :, i], SHIFT) <= 0.5
        assert _median_error(bw[0, :, i], (-SHIFT[0], -SHIFT[1])) <= 0.5
        for c in range(2):
            assert fw[0, c, i, 6:-6, 6:-6].median().item() == pytest.approx(SHIFT[c], abs=0.25)
            assert bw[0, c, i, 6:-6, 6:-6].median().item() == pytest.approx(-SHIFT[c], abs=0.25)


def test_dis_pairwise_matches_clip_and_empty_clip():
    video = _translating_video(32, 40, 3)
    fw, bw = estimate_flows(video, method="dis")
    frames = video[0].transpose(0, 1)
    pf, pb = DisFlow().bidirectional(frames[:-1], frames[1:])
    torch.testing.assert_close(pf, fw[0].transpose(0, 1))
    torch.testing.assert_close(pb, bw[0].transpose(0, 1))
    torch.testing.assert_close(flow_estimator("dis")(frames[:1], frames[1:2]), fw[0, :, :1].transpose(0, 1))

    fw1, bw1 = estimate_flows(video[:, :, :1], method="dis")
    assert fw1.shape == bw1.shape == (1, 2, 0, 32, 40)


# --------------------------------------------------------------------------- RAFT


def _random_raft(seed: int = 0) -> RAFT:
    """RAFT with seeded random weights, batch-norm statistics included, scaled to keep activations O(1)."""
    model = RAFT()
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in model.state_dict().items():
        if not v.dtype.is_floating_point:
            sd[k] = v
        elif k.endswith("running_var"):
            sd[k] = torch.rand(v.shape, generator=g) + 0.5
        elif v.dim() > 1:
            sd[k] = torch.randn(v.shape, generator=g) / math.sqrt(v[0].numel())
        elif k.endswith("weight"):
            sd[k] = 1 + 0.1 * torch.randn(v.shape, generator=g)
        else:
            sd[k] = 0.1 * torch.randn(v.shape, generator=g)
    # The checkpoint holds each shared downsample norm twice (norm3 and downsample.1), equal.
    for k in list(sd):
        if ".downsample.1." in k:
            sd[k.replace(".downsample.1.", ".norm3.")] = sd[k]
    model.load_state_dict(sd, strict=True)
    return model.eval().requires_grad_(False)


def _save_official(model: RAFT, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, path)


def test_raft_matches_official_manifest():
    manifest = json.loads((MANIFESTS / "raft_things.json").read_text())
    with torch.device("meta"):
        model = RAFT()
    sd = model.state_dict()
    expected = {k.removeprefix("module."): tuple(shape) for k, shape in manifest["keys"].items()}
    assert all(k.startswith("module.") for k in manifest["keys"])
    assert list(sd) == list(expected)  # same keys, in the same order
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    assert sum(p.numel() for p in model.parameters()) == manifest["parameters"]


def test_load_raft_official_layout_and_flow_shapes(tmp_path):
    assert default_method(tmp_path) == "dis"
    model = _random_raft()
    path = tmp_path / "propagator" / "raft-things.pth"
    _save_official(model, path)
    assert default_method(tmp_path) == "raft"

    loaded = load_raft(path)
    assert not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k

    # 30x37 is not a multiple of 8: frames are padded to 32x40 and the flow cropped back.
    video = torch.rand(1, 3, 3, 30, 37, generator=torch.Generator().manual_seed(1)) * 2 - 1
    fw, bw = estimate_flows(video, method="raft", raft=loaded)
    assert fw.shape == bw.shape == (1, 2, 2, 30, 37)
    assert fw.dtype == bw.dtype == torch.float32
    assert torch.isfinite(fw).all() and torch.isfinite(bw).all()
    assert fw.abs().max() > 0

    # Pairwise and streaming entry points give the same flows as the clip path.
    frames = video[0].transpose(0, 1)
    est = RaftFlow(loaded)
    torch.testing.assert_close(est(frames[:-1], frames[1:]), fw[0].transpose(0, 1), atol=1e-4, rtol=1e-4)
    pf, pb = est.bidirectional(frames[1:2], frames[2:3])
    torch.testing.assert_close(pf, fw[0, :, 1:2].transpose(0, 1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(pb, bw[0, :, 1:2].transpose(0, 1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(estimate_flows(video, "raft", raft=flow_estimator("raft", loaded))[0], fw,
                               atol=1e-4, rtol=1e-4)

    fw1, bw1 = estimate_flows(video[:, :, :1], method="raft", raft=loaded)
    assert fw1.shape == bw1.shape == (1, 2, 0, 30, 37)


def test_raft_padding_is_replicate_and_centred():
    model = _random_raft(2)
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(2, 1, 3, 30, 37, generator=g) * 2 - 1
    flow = RaftFlow(model)(a, b)
    pad = (1, 2, 1, 1)  # 37 -> 40 (left 1, right 2), 30 -> 32 (top 1, bottom 1)
    pa = torch.nn.functional.pad(a, pad, mode="replicate")
    pb = torch.nn.functional.pad(b, pad, mode="replicate")
    with torch.no_grad():
        direct = model(pa, pb)[..., 1:31, 1:38]
    torch.testing.assert_close(flow, direct, atol=1e-4, rtol=1e-4)


def test_raft_small_frames_and_bfloat16():
    model = _random_raft(4)
    video = torch.rand(1, 3, 2, 12, 20, generator=torch.Generator().manual_seed(5)) * 2 - 1
    # Below 64 px the official RAFT fails (its correlation pyramid pools to nothing); here it runs.
    fw, bw = estimate_flows(video, "raft", raft=model)
    assert fw.shape == (1, 2, 1, 12, 20) and torch.isfinite(fw).all() and torch.isfinite(bw).all()
    # Reduced precision: encoders and update in bfloat16, correlation and flow in float32.
    fw16, _ = estimate_flows(video, "raft", raft=model.to(torch.bfloat16))
    assert fw16.dtype == torch.float32 and torch.isfinite(fw16).all()


def test_load_raft_errors_name_the_file(tmp_path):
    missing = tmp_path / "none" / "raft-things.pth"
    with pytest.raises(ModelLoadError, match=re.escape(str(missing))):
        load_raft(missing)

    model = _random_raft()
    good = tmp_path / "good.pth"
    _save_official(model, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match=re.escape(str(truncated))) as err:
        load_raft(truncated)
    assert "\n" not in str(err.value) and "corrupt" in str(err.value)

    sd = {"module." + k: v for k, v in model.state_dict().items()}
    del sd["module.update_block.flow_head.conv2.bias"]
    sd["module.fnet.conv1.weight"] = torch.zeros(64, 3, 3, 3)
    wrong = tmp_path / "wrong.pth"
    torch.save(sd, wrong)
    with pytest.raises(ModelLoadError, match=re.escape(str(wrong))) as err:
        load_raft(wrong)
    msg = str(err.value)
    assert "\n" not in msg and "flow_head.conv2.bias" in msg and "fnet.conv1.weight" in msg

    from safetensors.torch import save_file

    st = tmp_path / "raft-things.safetensors"
    save_file({k: v.clone() for k, v in model.state_dict().items()}, str(st))  # unshare norm3/downsample.1
    assert torch.equal(load_raft(st).state_dict()["fnet.conv1.weight"], model.state_dict()["fnet.conv1.weight"])


def _torchvision_key(name: str) -> str:
    """princeton-vl RAFT parameter name -> torchvision raft_large name."""
    for ours, theirs in (("fnet.", "feature_encoder."), ("cnet.", "context_encoder.")):
        if name.startswith(ours):
            rest = name[len(ours) :]
            rest = re.sub(r"^conv1\.", "convnormrelu.0.", rest)
            rest = re.sub(r"^norm1\.", "convnormrelu.1.", rest)
            rest = re.sub(r"^conv2\.", "conv.", rest)
            rest = re.sub(r"^(layer\d\.\d)\.conv([12])\.", r"\1.convnormrelu\2.0.", rest)
            rest = re.sub(r"^(layer\d\.\d)\.norm([12])\.", r"\1.convnormrelu\2.1.", rest)
            return theirs + rest
    gru = re.fullmatch(r"update_block\.gru\.conv([zrq])([12])\.(\w+)", name)
    if gru:
        return f"update_block.recurrent_block.convgru{gru[2]}.conv{gru[1]}.{gru[3]}"
    table = {
        "update_block.encoder.convc1.": "update_block.motion_encoder.convcorr1.0.",
        "update_block.encoder.convc2.": "update_block.motion_encoder.convcorr2.0.",
        "update_block.encoder.convf1.": "update_block.motion_encoder.convflow1.0.",
        "update_block.encoder.convf2.": "update_block.motion_encoder.convflow2.0.",
        "update_block.encoder.conv.": "update_block.motion_encoder.conv.0.",
        "update_block.mask.0.": "mask_predictor.convrelu.0.",
        "update_block.mask.2.": "mask_predictor.conv.",
    }
    for ours, theirs in table.items():
        if name.startswith(ours):
            return theirs + name[len(ours) :]
    return name  # update_block.flow_head.* is named alike


def test_raft_matches_torchvision_raft_large():
    optical_flow = pytest.importorskip("torchvision.models.optical_flow")
    ours = _random_raft(6)
    theirs = optical_flow.raft_large(weights=None).eval()
    # norm3 duplicates downsample.1 in the princeton layout; torchvision keeps one copy.
    mapped = {_torchvision_key(k): v for k, v in ours.state_dict().items() if ".norm3." not in k}
    theirs.load_state_dict(mapped, strict=True)
    g = torch.Generator().manual_seed(7)
    # torchvision needs at least 128 px; 136 wide exercises a non-square grid.
    a = torch.rand(1, 3, 128, 136, generator=g) * 2 - 1
    b = torch.roll(a, shifts=(2, -3), dims=(2, 3)) + 0.05 * torch.randn(a.shape, generator=g)
    with torch.no_grad():
        expected = theirs(a, b, num_flow_updates=20)[-1]
    got = RaftFlow(ours)(a, b)
    assert got.shape == expected.shape
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= 1e-5 * max(scale, 1.0) + 1e-4


# --------------------------------------------------------------------------- errors


def test_unknown_method_raises():
    video = torch.zeros(1, 3, 2, 16, 16)
    with pytest.raises(ValueError, match=r"method='farneback'.*accepted: raft, dis"):
        estimate_flows(video, method="farneback")
    with pytest.raises(ValueError, match=r"method='RAFT'"):
        flow_estimator("RAFT")
    with pytest.raises(ValueError, match=r"method='raft' needs the RAFT weights"):
        estimate_flows(video, method="raft")
