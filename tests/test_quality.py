"""The quality report: each measure against an independent implementation, synthetic clips with
known answers read through the real VapourSynth and ffmpeg, the report's files (the HTML page in
a real headless Chromium), the CLI, and bad input (one line each, before anything is measured)."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess

import numpy as np
import pytest
import torch
from clips import AIGC, ANIMATION
from quality_clips import SCALE, moving, texture, with_pulses, write_video

from vs_uav.app.report import ReportError, ReportJob, run_report
from vs_uav.core import quality as q
from vs_uav.media.quality import figures, scene_ranges, worst_frames

FRAMES = 40
PULSES = (10, 30)
CAST = (0.04, 0.0, -0.03)


# -- each measure against an independent implementation ------------------------------------------

def _real_frames(video, n: int = 3) -> torch.Tensor:
    from vs_uav.media.quality import open_video, read_frames

    return read_frames(open_video(video, "SOURCE"), range(n))


def test_psnr_and_ssim_match_torchmetrics_on_real_frames():
    tm = pytest.importorskip("torchmetrics.functional.image")
    frames = _real_frames(ANIMATION, 4)
    a, b = frames[:-1], frames[1:]  # neighbouring frames: a real, moderate difference
    assert torch.allclose(q.psnr(a, b), tm.peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none",
                                                                  dim=(1, 2, 3)), atol=1e-4)
    ours, theirs = q.ssim(a, b), tm.structural_similarity_index_measure(a.double(), b.double(), data_range=1.0,
                                                                        reduction="none")
    assert (ours.double() - theirs).abs().max() < 1e-5
    assert 0.2 < float(ours.min()) < 0.999  # the frames differ: not a trivial 1


def test_downscale_is_pils_antialiased_bicubic():
    from PIL import Image

    frame = _real_frames(AIGC, 1)
    small = q.downscale(frame, (64, 64))[0]
    for c in range(3):
        pil = Image.fromarray(frame[0, c].numpy(), mode="F").resize((64, 64), Image.Resampling.BICUBIC)
        assert np.abs(np.asarray(pil).clip(0, 1) - small[c].numpy()).max() < 2e-3


def test_warping_error_matches_an_opencv_numpy_implementation():
    cv2 = pytest.importorskip("cv2")
    g = torch.Generator().manual_seed(3)
    h, w = 40, 52
    a = torch.rand(2, 3, h, w, generator=g)
    b = torch.rand(2, 3, h, w, generator=g)
    # Smooth flows with a fold in them, so that some pixels fail the consistency test.
    fw = torch.nn.functional.interpolate(torch.randn(2, 2, 4, 5, generator=g) * 3, (h, w), mode="bilinear")
    bw = -fw + torch.nn.functional.interpolate(torch.randn(2, 2, 3, 3, generator=g) * 0.7, (h, w), mode="bilinear")
    mask = q.visible(fw, bw)
    ours = q.warping_error(a, b, fw, mask)
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    for i in range(2):
        f, r = fw[i].numpy(), bw[i].numpy()
        mx, my = xs + f[0], ys + f[1]
        back = np.stack([cv2.remap(r[c], mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT) for c in range(2)])
        ok = ((f + back) ** 2).sum(0) < 0.01 * ((f ** 2).sum(0) + (back ** 2).sum(0)) + 0.5
        ok &= (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
        warped = np.stack([cv2.remap(b[i, c].numpy(), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
                           for c in range(3)])
        theirs = ((a[i].numpy() - warped) ** 2)[:, ok].mean()
        assert 0.1 < ok.mean() < 0.99
        assert abs(float(mask[i, 0].numpy().astype(bool).mean()) - ok.mean()) < 0.01
        assert float(ours[i]) == pytest.approx(theirs, rel=0.02)


def test_jitter_peaks_at_a_pulse_and_stays_in_its_scene():
    values = [1.0] * 12
    values[4] = 5.0
    out = q.jitter(values, [0, 8])
    assert out[4] == 4.0 and out[3] == out[5] == 2.0
    values[7], values[8] = 1.0, 50.0  # a new scene at 8 of a different level: no jitter at the cut
    assert q.jitter(values[:8] + [50.0] * 4, [0, 8])[7:] == [0.0] * 5
    assert q.jitter([0.1 * t for t in range(10)], [0])[1:-1] == pytest.approx([0.0] * 8)  # a fade: none


# -- synthetic clips with known answers -------------------------------------------------------------

@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quality")
    src = moving(FRAMES)
    big = moving(FRAMES, SCALE)
    noise = torch.Generator().manual_seed(9)
    cast = torch.tensor(CAST).view(1, 3, 1, 1)
    return {
        "folder": folder,
        "source": write_video(folder / "source.mkv", src),
        "clean": write_video(folder / "clean.mkv", big),
        "noisy": write_video(folder / "noisy.mkv", big + 0.04 * torch.randn(big.shape, generator=noise)),
        "pulsed": write_video(folder / "pulsed.mkv", with_pulses(big, PULSES, 0.06)),
        "cast": write_video(folder / "cast.mkv", big + cast),
    }


@pytest.fixture(scope="module")
def report(clips):
    outputs = tuple(clips[k] for k in ("clean", "noisy", "pulsed", "cast"))
    return run_report(ReportJob(clips["source"], outputs, clips["folder"] / "report.html", flow="dis",
                                scene_cuts="none"))


def test_translation_is_steady_noise_is_not(report):
    rep, _ = report
    m = rep.measurements
    clean, noisy = figures(m, 0), figures(m, 1)
    assert clean.ewarp < 0.15  # a sub-pixel translation, warped back along the flow: near zero
    assert noisy.ewarp > 10 * clean.ewarp and noisy.ewarp > 2.0  # 2 sigma^2 = 3.2e-3 of independent noise
    assert clean.ewarp_bicubic < 0.15
    assert clean.psnr > 35 and noisy.psnr < clean.psnr
    assert math.isnan(m.outputs[0].ewarp[-1])  # the last frame starts no pair


def test_a_brightness_pulse_shows_as_flicker_exactly_there(report):
    rep, _ = report
    m = rep.measurements
    worst = worst_frames(m, 2, count=2)
    assert sorted(worst.flicker) == list(PULSES)
    luma, _ = __import__("vs_uav.media.quality", fromlist=["flicker"]).flicker(m, m.outputs[2])
    for t in PULSES:
        assert luma[t] == pytest.approx(0.06 * 255, rel=0.1)
    assert max(v for t, v in enumerate(luma) if abs(t - 10) > 1 and abs(t - 30) > 1) < 0.5
    assert figures(m, 0).flicker == pytest.approx(figures(m, 0).flicker_source, abs=0.1)


def test_a_colour_cast_is_reported_per_channel(report):
    rep, _ = report
    m = rep.measurements
    for first, end in scene_ranges(m):
        shift = figures(m, 3, first, end).colour_shift
        assert shift == pytest.approx(tuple(c * 255 for c in CAST), abs=0.4)
    assert figures(m, 0).colour_shift == pytest.approx((0, 0, 0), abs=0.4)


def test_a_scene_cut_contributes_nothing(tmp_path):
    a, b = moving(20), moving(20, seed=1) * 0.5  # another texture, darker
    big_a, big_b = moving(20, SCALE), moving(20, SCALE, seed=1) * 0.5
    src = write_video(tmp_path / "src.mkv", torch.cat((a, b)))
    out = write_video(tmp_path / "out.mkv", torch.cat((big_a, big_b)))
    cuts = tmp_path / "cuts.txt"
    cuts.write_text("20\n")
    both, _ = run_report(ReportJob(src, (out,), tmp_path / "both.json", flow="dis", scene_cuts=str(cuts)))
    m = both.measurements
    assert m.starts == [0, 20] and math.isnan(m.outputs[0].ewarp[19]) and math.isnan(m.bicubic.ewarp[19])
    # Each scene measured as a clip of its own gives the same numbers: nothing crosses the cut.
    first, _ = run_report(ReportJob(write_video(tmp_path / "a.mkv", a), (write_video(tmp_path / "A.mkv", big_a),),
                                    tmp_path / "a.json", flow="dis", scene_cuts="none"))
    whole_a, scene_a = figures(first.measurements, 0), figures(m, 0, 0, 20)
    assert scene_a.ewarp == pytest.approx(whole_a.ewarp, rel=1e-5)
    assert scene_a.flicker == pytest.approx(whole_a.flicker, rel=1e-5)
    assert max(first.measurements.outputs[0].ewarp[:19]) < 0.15


# -- the files ---------------------------------------------------------------------------------------

def test_json_and_csv_hold_the_same_numbers(report, clips):
    rep, files = report
    assert [f.name for f in files] == ["report.html", "report.json", "report.csv"]
    data = json.loads(files[1].read_text())
    assert data["flow"].startswith("DIS") and data["frames"] == FRAMES and data["scene_starts"] == [0]
    assert [o["path"] for o in data["outputs"]] == [str(clips[k]) for k in ("clean", "noisy", "pulsed", "cast")]
    assert data["outputs"][0]["frames"]["ewarp"][-1] is None
    assert data["outputs"][2]["worst"]["flicker"][:2] == sorted(PULSES) or \
        sorted(data["outputs"][2]["worst"]["flicker"][:2]) == list(PULSES)
    rows = list(csv.DictReader(files[2].open()))
    assert len(rows) == 4 * FRAMES
    psnr = [float(r["psnr_lr"]) for r in rows if r["output"] == str(clips["noisy"])]
    assert psnr == pytest.approx(rep.measurements.outputs[1].psnr, abs=1e-3)
    assert rows[0]["timecode"] == "00:00:00:00" and rows[25]["timecode"] == "00:00:01:01"


def test_png_summary_decodes(report, clips):
    from PIL import Image

    from vs_uav.app.report_page import write_report

    rep, _ = report
    files = write_report(rep, clips["folder"] / "summary.png")
    with Image.open(files[0]) as image:
        assert image.format == "PNG" and image.width >= 800 and image.height >= 800
        assert len(np.unique(np.asarray(image.convert("RGB").resize((64, 64))).reshape(-1, 3), axis=0)) > 20  # plots, not a blank page


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("no Chromium (`make setup` installs Debian's chromium)")
    return found


def test_html_report_renders_offline_in_headless_chromium(report, tmp_path):
    from PIL import Image

    _, files = report
    page = files[0].read_text()
    assert "<script" not in page and "<link" not in page and "http://" not in page and "https://" not in page
    assert page.count("data:image/png;base64,") >= 2  # the plots and the crops, embedded
    assert "Worst frames: lowest fidelity: " in page and " (00:00:00:" in page  # named, with timecodes
    shot = tmp_path / "shot.png"
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1200,2400",
                    f"--screenshot={shot}", files[0].as_uri()], check=True, capture_output=True, timeout=120)
    with Image.open(shot) as image:
        rgb = np.asarray(image.convert("RGB")).astype(int)
    assert rgb.shape[:2] == (2400, 1200)
    # The plots' first line colour (matplotlib's blue, #1f77b4) is drawn: the embedded plot rendered.
    blue = (np.abs(rgb - np.array([31, 119, 180])).sum(-1) < 40).sum()
    assert blue > 500
    assert (rgb.sum(-1) < 200).sum() > 2000  # text and table lines


# -- the command line and bad input -------------------------------------------------------------------

def test_uav_report_command(clips, capsys):
    from vs_uav.app.cli import main

    out = clips["folder"] / "cli.json"
    assert main(["report", str(clips["source"]), str(clips["clean"]), "-o", str(out), "--flow", "dis",
                 "--scene-cuts", "none"]) == 0
    said = capsys.readouterr().out
    assert "clean.mkv: PSNR-LR" in said and "E*warp" in said and str(out) in said
    assert json.loads(out.read_text())["outputs"][0]["path"] == str(clips["clean"])
    assert not out.with_suffix(".csv").exists() and not out.with_suffix(".html").exists()  # -o x.json: only that


def test_an_excerpts_render_is_reported_against_those_frames_of_the_source(clips, capsys):
    """`uav upscale --frames 5-12` renders 8 frames: `uav report --frames 5-12` cuts the source to
    them (same numbers as the whole clean render's frames 5-12); without it, one line."""
    from vs_uav.app.cli import main

    folder = clips["folder"]
    part = write_video(folder / "part.mkv", moving(FRAMES, SCALE)[5:13])
    out = folder / "part.json"
    assert main(["report", str(clips["source"]), str(part), "-o", str(out), "--flow", "dis", "--scene-cuts", "none",
                 "--frames", "5-12"]) == 0
    said = capsys.readouterr().out
    assert "8 frames (the source's frames 5-12: numbered from 0 below)" in said
    data = json.loads(out.read_text())
    assert data["frames"] == 8 and data["source_first_frame"] == 5
    whole = folder / "whole.json"  # the same frames, measured in the whole clean render's report
    assert main(["report", str(clips["source"]), str(clips["clean"]), "-o", str(whole), "--flow", "dis",
                 "--scene-cuts", "none"]) == 0
    capsys.readouterr()
    psnr = json.loads(whole.read_text())["outputs"][0]["frames"]["psnr"][5:13]
    assert data["outputs"][0]["frames"]["psnr"] == pytest.approx(psnr, rel=1e-6)
    with pytest.raises(SystemExit, match=r"OUTPUT .*part\.mkv: 8 frames, the source has \d+; accepted: "):
        main(["report", str(clips["source"]), str(part), "-o", str(out), "--flow", "dis", "--scene-cuts", "none"])
    with pytest.raises(SystemExit, match=r"--frames 5-99: the source has frames 0-\d+; accepted: FIRST-LAST"):
        main(["report", str(clips["source"]), str(part), "-o", str(out), "--flow", "dis", "--frames", "5-99"])


@pytest.fixture(scope="module")
def bad(clips):
    folder = clips["folder"]
    big = moving(FRAMES, SCALE)
    partial = folder / "render.partial.mkv"
    shutil.copy(clips["clean"], partial)
    cut = folder / "cut.mkv"
    data = clips["clean"].read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    # An MP4 with its index first (moov before the frames), cut inside its frames.
    full = folder / "full.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(clips["clean"]), "-c:v", "libx264", "-qp", "0",
                    "-movflags", "+faststart", str(full)], check=True)
    mp4 = full.read_bytes()
    (folder / "cut.mp4").write_bytes(mp4[: len(mp4) * 2 // 3])
    streamed = folder / "streamed.mkv"  # written to a pipe: no duration, whole
    with open(streamed, "wb") as f:
        subprocess.run(["ffmpeg", "-v", "error", "-i", str(clips["clean"]), "-c", "copy", "-f", "matroska", "-"],
                       stdout=f, check=True)
    return {"3x": write_video(folder / "three.mkv", moving(FRAMES, 3)), "short": write_video(folder / "short.mkv",
                                                                                         big[:30]),
            "partial": partial, "cut": cut, "cut_mp4": folder / "cut.mp4", "streamed": streamed}


@pytest.mark.parametrize("case, expected", [
    ("3x", "OUTPUT {path}: 192x144 is not 4x the source's 64x48; accepted: 256x192"),
    ("short", "OUTPUT {path}: 30 frames, the source has 40; accepted: a render of the whole source"),
    ("partial", "OUTPUT {path}: a partial file"),
    ("cut", "OUTPUT {path}: damaged or cut off (ffprobe: "),
    ("cut_mp4", "OUTPUT {path}: damaged or cut off (ffprobe: "),
])
def test_bad_outputs_are_refused_in_one_line(clips, bad, case, expected):
    with pytest.raises(ReportError) as e:
        run_report(ReportJob(clips["source"], (clips["clean"], bad[case]), clips["folder"] / "bad.json"))
    said = str(e.value)
    assert said.startswith(expected.format(path=bad[case])) and "\n" not in said
    assert not (clips["folder"] / "bad.json").exists()


def test_a_streamed_file_without_a_duration_is_whole(clips, bad):
    from vs_uav.media.probe import ffprobe_json

    header, _ = ffprobe_json(["-show_entries", "format=duration:stream_tags=DURATION"], bad["streamed"])
    assert not header["streams"][0].get("tags", {}).get("DURATION")  # the muxer could not go back to write it
    rep, _ = run_report(ReportJob(clips["source"], (bad["streamed"],), clips["folder"] / "streamed.json", flow="dis",
                                  scene_cuts="none"))
    assert len(rep.measurements.outputs[0].psnr) == FRAMES and figures(rep.measurements, 0).psnr > 35


def test_bad_reference_and_options_are_refused_in_one_line(clips):
    folder = clips["folder"]
    cases = [
        (dict(reference=clips["source"]), f"--reference {clips['source']}: 64x48; accepted: the outputs' size 256x192"),
        (dict(path=folder / "report.txt"), f"-o {folder / 'report.txt'}: not a report format; accepted"),
        (dict(path=folder / "none" / "r.html"), f"-o {folder / 'none' / 'r.html'}: the folder"),
        (dict(flow="farneback"), "--flow farneback: not a flow method; accepted: auto, raft, dis"),
        (dict(flow="raft", model_dir=folder), f"--flow raft: no RAFT weights (propagator/raft-things.pth) in {folder}"),
    ]
    for change, expected in cases:
        job = ReportJob(clips["source"], (clips["clean"],), change.pop("path", folder / "r.json"), **change)
        with pytest.raises(ReportError) as e:
            run_report(job)
        assert str(e.value).startswith(expected) and "\n" not in str(e.value), str(e.value)


def test_a_reference_is_measured(clips):
    rep, _ = run_report(ReportJob(clips["source"], (clips["noisy"],), clips["folder"] / "ref.json",
                                  reference=clips["clean"], flow="dis", scene_cuts="none"))
    f = figures(rep.measurements, 0)
    assert 26 < f.psnr_ref < 30  # noise of sigma 0.04 (8-bit rounded): 20 log10(1 / 0.04) = 27.96 dB
    assert f.ssim_ref < 0.95


def test_lpips_against_the_reference_when_its_weights_are_present(clips, tmp_path, monkeypatch):
    pytest.importorskip("torchmetrics.image.lpip")
    torchvision = pytest.importorskip("torchvision")
    from torchmetrics.functional.image import learned_perceptual_image_patch_similarity as tm_lpips

    from vs_uav.media.quality import LPIPS_WEIGHTS, open_video, read_frames

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    rep, _ = run_report(ReportJob(clips["source"], (clips["noisy"],), tmp_path / "none.json",
                                  reference=clips["clean"], flow="dis", scene_cuts="none"))
    assert rep.measurements.notes[0].startswith(f"LPIPS: not computed: no AlexNet weights at {tmp_path / 'empty'}")
    assert math.isnan(figures(rep.measurements, 0).lpips_ref) and "LPIPS: not computed" in rep.summary()
    # Weights in torch's hub cache (random ones here: the real ones are ImageNet's): LPIPS per frame.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    checkpoints = tmp_path / "home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), checkpoints / LPIPS_WEIGHTS)
    rep, files = run_report(ReportJob(clips["source"], (clips["clean"], clips["noisy"]), tmp_path / "lpips.json",
                                      reference=clips["clean"], flow="dis", scene_cuts="none"))
    clean, noisy = rep.measurements.outputs
    assert max(clean.lpips_ref) == 0.0 and min(noisy.lpips_ref) > 0
    out, ref = (read_frames(open_video(clips[k], "OUTPUT"), [3]) for k in ("noisy", "clean"))
    assert noisy.lpips_ref[3] == pytest.approx(float(tm_lpips(out, ref, net_type="alex", normalize=True)), rel=1e-4)
    assert json.loads(files[0].read_text())["notes"][0].startswith("LPIPS: AlexNet")


def test_raft_flow_is_used_when_its_weights_are_present(tmp_path):
    pytest.importorskip("torchvision.models.optical_flow")
    from test_flow import _random_raft, _save_official

    from vs_uav.media.quality import flow_for

    _save_official(_random_raft(), tmp_path / "propagator" / "raft-things.pth")
    estimator, name = flow_for("raft", tmp_path)
    assert estimator.method == "raft" and name.startswith("RAFT-large") and name.endswith("CPU)")
    assert flow_for("dis", tmp_path)[0].method == "dis"
    # auto: RAFT where a GPU runs it; on a CPU DIS, saying that RAFT's weights are there.
    auto, said = flow_for("auto", tmp_path, cuda=False)
    assert auto.method == "dis" and "RAFT's weights are there: --flow raft uses them" in said
    assert flow_for("auto", tmp_path / "none", cuda=False)[1] == "DIS (OpenCV, medium preset, on the source)"
    frames = torch.stack([texture(128, 136, (t * 1.5, 0.0)) for t in range(2)]) * 2 - 1
    fw, bw = estimator.bidirectional(frames[:1], frames[1:])
    assert fw.shape == bw.shape == (1, 2, 128, 136) and torch.isfinite(fw).all()


def test_chunks_hold_the_same_pixels_at_any_size():
    from vs_uav.media.quality import chunk_frames

    assert [chunk_frames(s) for s in ((192, 256), (1080, 1920), (1440, 2560), (2160, 3840), (4320, 7680))] == \
        [8, 8, 4, 2, 2]


def test_low_size_frames_are_refused_for_ssim():
    with pytest.raises(ValueError, match="SSIM needs at least 11x11"):
        q.ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
