"""Every shipped preset's generated .vpy runs under vspipe with the tiny reference model and its
generated command (run as it is, by a shell) writes a valid file with the source's audio."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MODEL_DIR

from vs_uav.app import presets
from vs_uav.app.plan import default_output, plan_preset_render

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
CODEC_NAMES = {"x265": "hevc", "x264": "h264", "ffv1": "ffv1", "prores": "prores"}


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    # 32x24, 10 frames, with an audio track; an awkward name on purpose.
    path = tmp_path_factory.mktemp("src") / "tiny l'été clip.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=32x24:rate=10", "-f", "lavfi", "-i",
                    "sine=frequency=440", "-frames:v", "10", "-t", "1", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", str(path)], check=True)
    return path


@pytest.mark.parametrize("name", sorted(presets.available()))
def test_generated_script_and_command_render(name, clip, tmp_path, monkeypatch):
    monkeypatch.setenv("UAV_CONFIG_DIR", str(tmp_path / "config"))  # shipped presets only
    preset = presets.load(name)
    # Everything the preset sets stays, except what makes the tiny model's CPU render long.
    cheap = dataclasses.replace(preset.settings, model=str(MODEL_DIR), steps=2, chunk_size=8,
                                propagation_steps=[1] if preset.settings.propagation_steps else [])
    preset = dataclasses.replace(preset, settings=cheap)
    out_dir = tmp_path / "out put"
    out_dir.mkdir()
    result = plan_preset_render(preset, clip, out_dir / "my script.vpy",
                                out_dir / default_output(clip, preset.encoder).name)
    result.script_path.write_text(result.script, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "UAV_BRIDGE_IMPL"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    run = subprocess.run(["bash", "-c", f"set -o pipefail; {result.command}"], capture_output=True,
                         text=True, env=env, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    probe = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                            "stream=codec_type,codec_name,width,height,nb_read_frames", "-of", "json",
                            str(result.output)], capture_output=True, text=True, check=True)
    streams = {s["codec_type"]: s for s in json.loads(probe.stdout)["streams"]}
    video = streams["video"]
    assert (video["codec_name"], video["width"], video["height"], int(video["nb_read_frames"])) == \
        (CODEC_NAMES[preset.encoder.codec], 128, 96, 10)
    assert streams["audio"]["codec_name"] == "aac"  # mapped from the source, copied
