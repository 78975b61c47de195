"""Scene cuts (vs_uav.scenes): found where real shots were spliced together and nowhere inside a
continuous shot; cut files; the generated script marks them by default; the cluster's
segment plan (pure functions)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import vapoursynth as vs

from clips import AIGC, ALL, ANIMATION, MOVIE, splice
from conftest import MODEL_DIR
from vs_uav import scenes
from vs_uav.encoder import EncoderSettings
from vs_uav.presets import Preset
from vs_uav.scenes import SceneError, Segment, plan_segments
from vs_uav.script import plan

core = vs.core

# Excerpts of the three shared videos, and a jump within one film (animation frames 0-19, then
# 45-64: the same drawing style and colours, the hardest cut here).
PARTS = [(ANIMATION, 0, 20), (ANIMATION, 45, 20), (AIGC, 5, 20), (ANIMATION, 20, 20), (MOVIE, 2, 20),
         (ANIMATION, 65, 6)]


@pytest.fixture(scope="module")
def spliced(tmp_path_factory) -> tuple[Path, list[int]]:
    out = tmp_path_factory.mktemp("scenes") / "spliced.mkv"
    cuts = splice(out, PARTS, (96, 72), audio=False)
    assert cuts == [20, 40, 60, 80, 100]
    return out, cuts


def marked(clip: vs.VideoNode) -> list[int]:
    # Backwards: the props do not depend on the order frames are asked for.
    return sorted(n for n in reversed(range(clip.num_frames)) if clip.get_frame(n).props.get("_SceneChangePrev", 0))


def test_cuts_are_found_exactly_where_shots_were_spliced(spliced):
    path, cuts = spliced
    clip = core.bs.VideoSource(str(path))
    assert scenes.detect(clip) == cuts
    assert marked(scenes.mark_cuts(clip)) == cuts
    # The same-film jump is below the threshold: found because it stands out from its neighbours.
    diffs = [f.props["UAVSceneDiff"] for f in scenes._differences(clip).frames()]
    assert diffs[20] < scenes.DEFAULT_THRESHOLD and 20 in scenes.detect(clip)


@pytest.mark.parametrize("video", ALL, ids=lambda p: p.stem)
def test_no_cut_inside_a_continuous_shot(video):
    # Each shared video is one shot, old film grain and flicker included.
    clip = core.bs.VideoSource(str(video))
    assert scenes.detect(clip) == []
    assert marked(scenes.mark_cuts(clip)) == []


def test_threshold_decides(spliced):
    path, cuts = spliced
    clip = core.bs.VideoSource(str(path))
    # Far above every cut's difference (and the same-film jump below a quarter of it): no cut.
    assert scenes.detect(clip, threshold=1.0) == []
    # Far below the motion of the continuous shots: their frames become cuts too.
    assert len(scenes.detect(clip, threshold=0.005)) > 2 * len(cuts)
    with pytest.raises(SceneError, match=r"^scene_threshold=0; accepted: a number in \(0, 1\]$"):
        scenes.detect(clip, threshold=0)


def test_a_cut_file_replaces_detection(spliced, tmp_path):
    path, cuts = spliced
    clip = core.bs.VideoSource(str(path))
    listing = tmp_path / "cuts.txt"
    listing.write_text("# first frames of scenes\n7\n\n  50  # a comment\n7\n0\n", encoding="utf-8")
    assert scenes.read_cuts(listing, clip.num_frames) == [0, 7, 50]
    assert marked(scenes.mark_cuts(clip, cuts_file=str(listing))) == [7, 50]  # frame 0 starts anyway
    assert marked(scenes.mark_cuts(clip, cuts=[30])) == [30]


@pytest.mark.parametrize("text, line, word", [("5\nten\n", 2, "ten"), ("5\n106\n", 2, "106"), ("-1\n", 1, "-1"),
                                              ("2.5\n", 1, "2.5")])
def test_a_bad_cut_file_is_one_line(tmp_path, text, line, word):
    listing = tmp_path / "cuts.txt"
    listing.write_text(text, encoding="utf-8")
    with pytest.raises(SceneError) as e:
        scenes.read_cuts(listing, 106)
    assert str(e.value) == (f"--scene-cuts {str(listing)!r} line {line}: {word!r}; accepted: one frame number in "
                            "[0, 105] per line")
    with pytest.raises(SceneError, match=r"cannot be read \(No such file or directory\); accepted: 'auto', 'none'"):
        scenes.read_cuts(tmp_path / "missing.txt", 106)


def test_generated_scripts_mark_cuts_by_default(spliced, tmp_path):
    path, cuts = spliced
    listing = tmp_path / "cuts.txt"
    listing.write_text("33\n", encoding="utf-8")
    expected = {"auto": cuts, "none": [], str(listing): [33]}
    for option, want in expected.items():
        encoder = EncoderSettings(scene_cuts=option)
        script = plan(Preset("t", encoder=encoder), path, tmp_path / "t.vpy", probe=False).script
        assert ("vs_uav.scenes.mark_cuts(clip" in script) == (option != "none")
        # The script's lines up to the filter, evaluated as vspipe would: the props it hands uav.Upscale.
        head = script.split("clip = core.uav.Upscale(")[0]
        namespace: dict = {"__name__": "__vapoursynth__"}
        exec(compile(head, "t.vpy", "exec"), namespace)
        assert marked(namespace["clip"]) == want, option
    assert EncoderSettings().scene_cuts == "auto" and EncoderSettings().scene_threshold == 0.1
    with pytest.raises(ValueError, match=r"^scene_threshold=0\.0; accepted: a number in \[0\.001, 1\]$"):
        EncoderSettings(scene_threshold=0.0)
    with pytest.raises(ValueError, match=r"^scene_cuts='  '; accepted: 'auto', 'none' or a cut file"):
        EncoderSettings(scene_cuts="  ")


def test_presets_hold_the_scene_options(tmp_path, monkeypatch):
    from vs_uav import presets

    monkeypatch.setenv("UAV_CONFIG_DIR", str(tmp_path))
    path = tmp_path / "mine.toml"
    path.write_text('schema_version = 1\n[encoder]\nscene_cuts = "none"\nscene_threshold = 0.2\n', encoding="utf-8")
    loaded = presets.load(str(path))
    assert (loaded.encoder.scene_cuts, loaded.encoder.scene_threshold) == ("none", 0.2)
    assert "mark_cuts" not in plan(loaded, Path("/in.mp4"), probe=False).script
    path.write_text('schema_version = 1\n[encoder]\nscene_threshold = 2\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"encoder\.scene_threshold=2; accepted: a number in \[0\.001, 1\]"):
        presets.load(str(path))


@pytest.mark.slow
def test_uav_upscale_starts_fresh_at_cuts(tmp_path):
    """`uav upscale` with the default scene cuts gives the frames of a render told the same cuts
    by a file, and not those of a render without cuts; a bad cut file fails before any work."""
    src = tmp_path / "src.mkv"
    cuts = splice(src, [(ANIMATION, 0, 6), (AIGC, 5, 6), (MOVIE, 2, 6)], (48, 32), audio=False)
    listing = tmp_path / "cuts.txt"
    listing.write_text("".join(f"{c}\n" for c in cuts), encoding="utf-8")
    uav = [str(Path(sys.executable).parent / "uav"), "upscale", str(src), "--model", str(MODEL_DIR), "--steps", "1",
           "--flow", "dis", "--codec", "ffv1", "--audio", "none"]
    outs = {}
    for name, extra in (("auto", []), ("file", ["--scene-cuts", str(listing)]), ("none", ["--scene-cuts", "none"])):
        out = tmp_path / f"{name}.mkv"
        r = subprocess.run([*uav, "-o", str(out), *extra], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        outs[name] = subprocess.run(["ffmpeg", "-v", "error", "-i", str(out), "-f", "rawvideo", "-"],
                                    capture_output=True, check=True).stdout
    assert outs["auto"] == outs["file"] and outs["auto"] != outs["none"]
    listing.write_text("3\n999\n", encoding="utf-8")
    r = subprocess.run([*uav, "-o", str(tmp_path / "bad.mkv"), "--scene-cuts", str(listing)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == (
        f"uav upscale: --scene-cuts {str(listing)!r} line 2: '999'; accepted: one frame number in [0, 17] per line")
    assert not (tmp_path / "bad.mkv").exists()


# -- segments ---------------------------------------------------------------------------------

def test_scenes_split_the_clip_at_cuts():
    assert scenes.scenes([9, 17, 24], 30) == [(0, 9), (9, 17), (17, 24), (24, 30)]
    assert scenes.scenes([0, 24, 9, 9, 30], 30) == [(0, 9), (9, 24), (24, 30)]  # 0, repeats, the end: no scene
    assert scenes.scenes([], 5) == [(0, 5)]


def test_short_scenes_merge_up_to_the_target_longest_first():
    # Scenes of 9, 8, 7, 6 frames.
    assert plan_segments([9, 17, 24], 30, target=5) == [Segment(0, 9), Segment(9, 17), Segment(17, 24),
                                                         Segment(24, 30)]
    assert plan_segments([9, 17, 24], 30, target=17) == [Segment(0, 17), Segment(17, 30)]
    assert plan_segments([9, 17, 24], 30, target=16) == [Segment(9, 24), Segment(0, 9), Segment(24, 30)]
    assert plan_segments([9, 17, 24], 30, target=100) == [Segment(0, 30)]
    # Longest first, ties by position; every segment starts at a cut (or 0) and they tile the clip.
    plan_ = plan_segments([3, 4, 10, 30, 31, 50], 60, target=8)
    assert [s.frames for s in plan_] == sorted((s.frames for s in plan_), reverse=True)
    assert sorted((s.start, s.stop) for s in plan_) == [(0, 4), (4, 10), (10, 30), (30, 31), (31, 50), (50, 60)]
    assert all(not s.cold for s in plan_)


def test_split_long_cuts_long_scenes_on_chunk_bounds_and_says_which_start_cold():
    plan_ = plan_segments([100], 130, target=10, split_long=40, align=8)
    assert sorted(plan_) == [Segment(0, 32), Segment(32, 64, cold=True), Segment(64, 100, cold=True),
                             Segment(100, 130)]
    assert all(s.start % 8 == 0 or s.start == 100 for s in plan_)
    assert max(s.frames for s in plan_) <= 40
    # Without split_long a long scene stays whole; a cold piece is never merged into the one before.
    assert plan_segments([100], 130, target=10) == [Segment(0, 100), Segment(100, 130)]
    assert sorted(plan_segments([100], 130, target=1000, split_long=60, align=8)) == [
        Segment(0, 48), Segment(48, 130, cold=True)]


def test_bad_plans_are_one_line():
    with pytest.raises(SceneError, match=r"^a clip of 0 frames; accepted: at least 1 frame$"):
        plan_segments([], 0, target=5)
    with pytest.raises(SceneError, match=r"^--segment-seconds gives 0 frames; accepted: at least 1 frame$"):
        plan_segments([], 10, target=0)
