"""Image sequences (vs_uav.media.sequence): read from a folder or a pattern from the first
file's number at --fps, written as 16-bit RGB frames numbered as the source's; what cannot be
read or written said in one line. Real BestSource, vspipe and ffmpeg, the tiny reference model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MODEL_DIR

from vs_uav.app.job import JobError, UpscaleJob
from vs_uav.app.plan import default_output
from vs_uav.app.queue import finished_before
from vs_uav.media.encoder import EncoderSettings
from vs_uav.media.sequence import find_sequence, signature
from vs_uav.settings import UpscaleSettings

UAV = str(Path(sys.executable).parent / "uav")
RENDER = ["--model", str(MODEL_DIR), "--steps", "1"]
FFV1 = EncoderSettings(codec="ffv1")


def probe(path: Path, entries: str) -> str:
    return subprocess.run(["ffprobe", "-v", "error", "-count_packets", "-show_entries", entries, "-of", "csv=p=0",
                           str(path)], capture_output=True, text=True).stdout.strip()


@pytest.fixture
def scan(tmp_path) -> Path:
    """10 16-bit PNG frames numbered from 86400, as a scanner numbers them by timecode."""
    folder = tmp_path / "scan"
    folder.mkdir()
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=32x24:rate=25:duration=0.4",
                    "-pix_fmt", "rgb48be", "-start_number", "86400", str(folder / "reel1_%07d.png")], check=True)
    return folder


@pytest.mark.slow
def test_a_sequence_is_read_from_its_first_number_at_the_rate_given_and_written_as_one(scan, tmp_path):
    out = tmp_path / "out.mkv"
    run = subprocess.run([UAV, "upscale", str(scan / "reel1_%07d.png"), "-o", str(out), "--fps", "23.976", *RENDER,
                          "--codec", "ffv1"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert probe(out, "stream=width,pix_fmt,r_frame_rate,nb_read_packets") == "128,gbrp16le,24000/1001,10"
    # A 16-bit TIFF sequence out, from the folder, its frames numbered as the source's.
    tiffs = tmp_path / "restored" / "r1_%07d.tif"
    run = subprocess.run([UAV, "upscale", str(scan), "-o", str(tiffs), *RENDER], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in tiffs.parent.iterdir()) == [f"r1_{n:07d}.tif" for n in range(86400, 86410)]
    assert probe(tiffs.parent / "r1_0086409.tif", "stream=codec_name,width,pix_fmt") == "tiff,128,rgb48le"


@pytest.mark.slow
@pytest.mark.parametrize("first, fps, codec", [(1, "30", "x265"), (0, "24", "x264"), (1001, "50", "ffv1")])
def test_a_sequences_rate_is_its_outputs_timing_from_any_first_number(tmp_path, first, fps, codec):
    """The frames' timestamps (not only the header) are 1/fps apart, whatever the codec."""
    folder = tmp_path / "seq"
    folder.mkdir()
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=32x24:rate=25", "-frames:v", "6",
                    "-start_number", str(first), str(folder / "f_%04d.png")], check=True)
    out = tmp_path / "out.mkv"
    run = subprocess.run([UAV, "upscale", str(folder / "f_%04d.png"), "-o", str(out), "--fps", fps, *RENDER,
                          "--codec", codec], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    times = [float(t) for t in probe(out, "packet=pts_time").split()]
    steps = [b - a for a, b in zip(sorted(times), sorted(times)[1:])]
    assert len(times) == 6 and all(abs(s - 1 / int(fps)) <= 0.0011 for s in steps), times  # (Matroska: ms)


def test_a_sequence_job_is_named_checked_and_recorded_by_its_files(scan, tmp_path):
    job = UpscaleJob.create(scan, UpscaleSettings(), FFV1, fps=24)
    assert job.source == scan / "reel1_%07d.png" and job.prepare[0].startswith("clip = core.std.AssumeFPS(clip, "
                                                                               "fpsnum=24, fpsden=1)")
    assert job.output == scan / "reel1.uav.mkv" and not finished_before(job)
    assert default_output(scan / "%07d.png", EncoderSettings()) == tmp_path / "scan.uav.mkv"
    assert default_output(tmp_path / "a.mp4", EncoderSettings(codec="dpx")) == tmp_path / "a.uav" / "%07d.dpx"
    # A queue's resume record and the cluster's job key know a sequence by its files.
    before = signature(job.source)
    os.utime(scan / "reel1_0086405.png", ns=(1, 1 << 62))
    assert signature(job.source) != before and signature(job.source)[:2] == [86400, 10]
    pattern = scan / "reel1_%07d.png"
    for output, options, said in (
            (tmp_path / "x" / "%07d.exr", {}, r"^--output .*/x/%07d\.exr: an image sequence of \.exr; accepted: "
                                              r"\.tif, \.tiff, \.png, \.dpx \(16-bit RGB\), or a video file$"),
            (tmp_path / "x.mkv", {"encoder": EncoderSettings(codec="png")},
             r"^--codec png writes an image sequence; accepted: an --output pattern, e.g. .*/%07d\.png$"),
            (tmp_path / "o" / "%07d.tif", {"encoder": EncoderSettings(codec="png")},
             r"^--codec png with --output .*%07d\.tif: the extension names tiff; accepted: the two agreeing"),
            (tmp_path / "o" / "%07d.tif", {"cluster": __import__("vs_uav.app.cluster", fromlist=["x"]).ClusterOptions(
                "local")}, r"^--cluster with an image sequence output: not built yet; accepted: a video output")):
        encoder = options.pop("encoder", FFV1)
        with pytest.raises(JobError, match=said):
            UpscaleJob.create(pattern, UpscaleSettings(), encoder, output, **options)
    with pytest.raises(JobError, match=r"^--fps 25: accepted for an image sequence only \(a video has its own rate\)$"):
        clip = tmp_path / "v.mp4"
        clip.write_bytes(b"x")
        UpscaleJob.create(clip, UpscaleSettings(), FFV1, fps=25)
    # A gap in the numbers (the reader would stop there) and a folder of two sequences.
    (scan / "reel1_0086403.png").unlink()
    (scan / "take2_001.png").write_bytes((scan / "reel1_0086400.png").read_bytes())
    with pytest.raises(ValueError, match=r"^input .*/reel1_%07d\.png: frame 86403 is missing \(frames 86400-86402, "
                                         r"then 86404-\.\.\.\); accepted: consecutive frame numbers$"):
        find_sequence(pattern)
    run = subprocess.run([UAV, "upscale", str(scan), "-o", str(tmp_path / "bad.mkv"), *RENDER], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 1 and run.stderr == (
        f"uav upscale: input {scan}: holds several image sequences (reel1_#######.png, take2_###.png); accepted: "
        f"one, or a pattern naming it, e.g. {scan / '%07d.dpx'}\n")
