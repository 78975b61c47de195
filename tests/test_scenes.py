"""Scene cuts (vs_uav.vsfilter.scenes): found where real shots were spliced together and nowhere inside a
continuous shot or at a new drawing of limited animation (the labelled set, tests/cut_set.py);
cut files; the generated script marks them by default, on one frame too; the cluster's segment
plan (pure functions)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import cut_set
import pytest
import vapoursynth as vs
from clips import AIGC, ALL, ANIMATION, MOVIE, splice
from conftest import MODEL_DIR, REPO

from vs_uav.app.plan import plan_preset_render
from vs_uav.app.presets import Preset
from vs_uav.media.encoder import EncoderSettings
from vs_uav.settings import UpscaleSettings
from vs_uav.vsfilter import scenes
from vs_uav.vsfilter.scenes import SceneError, Segment, plan_segments

core = vs.core

# Excerpts of the three shared videos, and a jump within one shot of the cartoon (frames 0-19,
# then 45-64: the figure moves, the background stays, as at a new drawing of limited animation:
# not a cut, although its difference stands out from its neighbours').
PARTS = [(ANIMATION, 0, 20), (ANIMATION, 45, 20), (AIGC, 5, 20), (ANIMATION, 20, 20), (MOVIE, 2, 20),
         (ANIMATION, 65, 6)]
JUMP = 20


@pytest.fixture(scope="module")
def spliced(tmp_path_factory) -> tuple[Path, list[int]]:
    out = tmp_path_factory.mktemp("scenes") / "spliced.mkv"
    cuts = splice(out, PARTS, (96, 72), audio=False)
    assert cuts == [JUMP, 40, 60, 80, 100]
    return out, cuts[1:]


def marked(clip: vs.VideoNode) -> list[int]:
    # Backwards: the props do not depend on the order frames are asked for.
    return sorted(n for n in reversed(range(clip.num_frames)) if clip.get_frame(n).props.get("_SceneChangePrev", 0))


def test_cuts_are_found_exactly_where_shots_were_spliced(spliced):
    path, cuts = spliced
    clip = core.bs.VideoSource(str(path))
    assert scenes.detect(clip) == cuts
    assert marked(scenes.mark_cuts(clip)) == cuts
    # The jump inside the cartoon's shot stands out from its neighbours, but changes the figure
    # only: the luma rule alone (cover ignored) would cut there.
    frames = list(scenes._differences(clip).frames())
    diffs = [f.props["UAVSceneDiff"] for f in frames]
    neighbours = [diffs[j] for j in scenes._window(JUMP, len(diffs))]
    assert scenes.is_cut(JUMP, diffs[JUMP], neighbours, scenes.DEFAULT_THRESHOLD)
    assert frames[JUMP].props["UAVSceneCoverAverage"] < scenes.COVER
    assert all(frames[c].props["UAVSceneCoverAverage"] == 1 for c in cuts)


def readme_scores() -> tuple[float, float]:
    """The precision and recall the README promises on the labelled set."""
    text = (REPO / "README.md").read_text(encoding="utf-8").split("## Scene cuts", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"precision \*\*(\d\.\d+)\*\* and recall \*\*(\d\.\d+)\*\*", " ".join(text.split()))
    assert m, "README, Scene cuts: no 'precision **P** and recall **R**'"
    return float(m[1]), float(m[2])


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> tuple[vs.VideoNode, cut_set.Labels]:
    out = tmp_path_factory.mktemp("cut-set") / "set.mp4"
    labels = cut_set.build(out)
    return core.bs.VideoSource(str(out)), labels


def test_the_labelled_set_scores_what_the_readme_says(labelled):
    clip, labels = labelled
    assert clip.num_frames == labels.frames == 181 and len(labels.cuts) == 8 and len(labels.changes) >= 20
    found = scenes.detect(clip)
    hits = len(set(found) & set(labels.cuts))
    precision, recall = readme_scores()
    assert hits / max(1, len(found)) >= precision and hits / len(labels.cuts) >= recall, found
    # Every new drawing of old_animation_1 is no cut; every spliced cut is found, the two between
    # shots of similar colour included (a close-up of the cartoon, the old film mirrored).
    assert not set(found) & set(labels.changes)
    assert set(labels.cuts) <= set(found)
    similar = [at for at, shot in zip(cut_set.starts(), cut_set.SHOTS) if shot.view]
    assert len(similar) == 2 and set(similar) <= set(found)
    assert marked(scenes.mark_cuts(clip)) == found
    # What the README says was measured: cuts 0.11-0.20 with every block changed, new drawings up
    # to 0.056 and over 20x their held neighbours, but at most half of the blocks; the luma rule
    # alone (the detector before) cuts at 7 of them.
    frames = list(scenes._differences(clip).frames())
    diffs = [f.props["UAVSceneDiff"] for f in frames]
    cover = [f.props["UAVSceneCoverAverage"] for f in frames]
    around = [sum(diffs[j] for j in scenes._window(n, len(diffs))) / 4 for n in range(len(diffs))]
    assert all(0.11 <= diffs[c] <= 0.205 and cover[c] == 1 for c in labels.cuts)
    assert all(diffs[c] <= 0.056 and cover[c] <= 0.5 for c in labels.changes)
    assert max(cover[n] for n in range(1, len(diffs)) if n not in labels.cuts) <= 0.5  # continuous motion too
    assert max(diffs[c] / (around[c] + scenes.EPS) for c in labels.changes) > 20
    luma_only = [n for n in range(1, len(diffs))
                 if scenes.is_cut(n, diffs[n], [diffs[j] for j in scenes._window(n, len(diffs))], 0.1)]
    assert set(luma_only) - set(labels.cuts) <= set(labels.changes) and len(luma_only) == 8 + 7, luma_only


def test_cuts_behind_black_borders_are_found():
    # Letterboxed shots (bars over 39% of the frame, unchanged at the cut): most blocks still change.
    shots = [cut_set.Shot(ANIMATION, cut_set.run(0, 10)), cut_set.Shot(MOVIE, cut_set.run(0, 10)),
             cut_set.Shot(AIGC, cut_set.run(0, 10))]
    clip = core.std.AddBorders(cut_set.clip(shots, (128, 44)), top=14, bottom=14, color=[16, 128, 128])
    assert scenes.detect(clip) == [10, 20]


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
        script = plan_preset_render(Preset("t", encoder=encoder), path, tmp_path / "t.vpy", probe=False).script
        assert ("vs_uav.mark_cuts(clip" in script) == (option != "none")
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
    from vs_uav.app import presets

    monkeypatch.setenv("UAV_CONFIG_DIR", str(tmp_path))
    path = tmp_path / "mine.toml"
    path.write_text('schema_version = 1\n[encoder]\nscene_cuts = "none"\nscene_threshold = 0.2\n', encoding="utf-8")
    loaded = presets.load(str(path))
    assert (loaded.encoder.scene_cuts, loaded.encoder.scene_threshold) == ("none", 0.2)
    assert "mark_cuts" not in plan_preset_render(loaded, Path("/in.mp4"), probe=False).script
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


@pytest.mark.slow
def test_a_single_frame_an_image_and_two_or_three_frames(tmp_path):
    """The script `uav upscale` writes, cuts marked by default: a one-frame mp4 and a single PNG
    render with the tiny model (mark_cuts used to fail on one frame: a Trim of an empty range);
    2 and 3 frames, where the detector's neighbour windows are clipped at both ends, are marked."""
    sources = {}
    for frames in (1, 2, 3):
        sources[frames] = tmp_path / f"{frames}.mp4"
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25", "-frames:v",
                        str(frames), "-c:v", "libx264", "-pix_fmt", "yuv420p", str(sources[frames])], check=True)
    image = tmp_path / "still.png"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48", "-frames:v", "1",
                    str(image)], check=True)
    preset = Preset("t", settings=UpscaleSettings(model=str(MODEL_DIR), steps=1, flow="dis"))
    for frames, source in [*sources.items(), (1, image)]:
        script = plan_preset_render(preset, source, tmp_path / "t.vpy").script
        if frames > 1:  # up to the filter: the props it is handed
            script = script.split("clip = core.uav.Upscale(")[0]
        namespace: dict = {"__name__": "__vapoursynth__"}
        exec(compile(script, "t.vpy", "exec"), namespace)
        clip = namespace["clip"]
        assert (clip.num_frames, clip.width) == (frames, 256 if frames == 1 else 64), source.name
        assert [clip.get_frame(n).props["_SceneChangePrev"] for n in range(frames)] == [0] * frames
        assert scenes.detect(core.bs.VideoSource(str(source))) == []


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
