"""Conform planning (vs_uav.app.conform) on timelines built with the real OpenTimelineIO and
real media files: the source ranges an edit uses, through speed changes, freeze frames and
dissolves, widened by handles, merged, clamped; the same cut read back from a CMX 3600 EDL
written by OpenTimelineIO's adapter gives the same plan."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import opentimelineio as otio
import pytest

from vs_uav.app.conform import ConformError, Media, Use, merge_uses, plan_conform

UAV = str(Path(sys.executable).parent / "uav")
R = 25


def rt(frames: float) -> "otio.opentime.RationalTime":
    return otio.opentime.RationalTime(frames, R)


def clip(name: str, url: str, start: int, duration: int, *effects) -> "otio.schema.Clip":
    c = otio.schema.Clip(name=name, media_reference=otio.schema.ExternalReference(target_url=url),
                         source_range=otio.opentime.TimeRange(rt(start), rt(duration)))
    c.effects.extend(effects)
    return c


def source(path: Path, frames: int, timecode: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tc = ["-timecode", timecode] if timecode else []
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size=32x24:rate={R}",
                    "-frames:v", str(frames), *tc, "-c:v", "libx264", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def footage(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("conform")
    source(folder / "footage" / "a.mp4", 200)
    source(folder / "footage" / "b.mov", 150, timecode="01:00:00:00")
    return folder


def edit(footage: Path) -> "otio.schema.Timeline":
    """Two overlapping clips of a, a far one, a 50 % slow-motion and a freeze of a, a dissolve
    between two parts of b (its timecode starts at 01:00:00:00), a gap, an audio track."""
    a, b = "footage/a.mp4", str(footage / "footage" / "b.mov")  # relative, and absolute
    hour = 3600 * R
    video = otio.schema.Track(name="V1", kind=otio.schema.TrackKind.Video)
    video.extend([clip("a-1", a, 20, 20), clip("a-2", a, 30, 20), otio.schema.Gap(source_range=otio.opentime.TimeRange(
        rt(0), rt(10))), clip("a-far", a, 150, 10), clip("a-slow", a, 100, 20, otio.schema.LinearTimeWarp(
            time_scalar=0.5)), clip("a-freeze", a, 5, 12, otio.schema.FreezeFrame()),
        clip("b-1", "file://" + b, hour + 20, 20), otio.schema.Transition(in_offset=rt(5), out_offset=rt(5)),
        clip("b-2", b, hour + 100, 20)])
    audio = otio.schema.Track(name="A1", kind=otio.schema.TrackKind.Audio)
    audio.append(clip("music", "/nowhere/music.wav", 0, 100))  # audio: not rendered, never looked up
    timeline = otio.schema.Timeline(name="cut")
    timeline.tracks.extend([video, audio])
    return timeline


def pieces(plan) -> list:
    return [(p.media.path.name, p.start, p.end, [u.clip for u in p.uses]) for p in plan.pieces]


def test_an_edit_plans_only_the_ranges_it_uses_with_handles(footage):
    path = footage / "cut.otio"
    otio.adapters.write_to_file(edit(footage), str(path))
    plan = plan_conform(path, handles=4, merge_gap=0, scene_cuts="none")
    # Each piece's start then moves back onto its scene's window grid (no cuts: multiples of 6).
    assert pieces(plan) == [
        ("a.mp4", 0, 10, ["a-freeze"]),  # the freeze shows frame 5 only: 5 +- 4, from 0
        ("a.mp4", 12, 54, ["a-1", "a-2"]),  # 20-39 and 30-49 overlap: one piece, 16-53, from 12
        ("a.mp4", 96, 114, ["a-slow"]),  # 20 frames at half speed show 10 source frames, 100-109
        ("a.mp4", 144, 164, ["a-far"]),  # 146-163, from 144
        ("b.mov", 12, 49, ["b-1"]),  # timecode 01:00:00:20 is frame 20; the dissolve needs 5 frames after it
        ("b.mov", 90, 124, ["b-2"]),  # and 5 before b-2: 91-123, from 90
    ]
    assert (plan.used_frames, plan.rendered_frames, plan.source_frames) == (101, 161, 350)
    assert plan.summary() == ("6 pieces from 2 sources: the edit uses 101 frames, the conform renders 161 with "
                              "4-frame handles, of 350 in the sources (46%)")
    # By default pieces closer than twice the handles are merged: one cold start less; without
    # scene_cuts the starts are the planned ones (the render puts them on the grid: align_plan).
    assert [p[:3] for p in pieces(plan_conform(path, handles=4))][:2] == [("a.mp4", 1, 54), ("a.mp4", 96, 114)]
    # testsrc has no cut that the default detection finds: the grid is multiples of 6 from 0.
    assert [p[1] for p in pieces(plan_conform(path, handles=4, scene_cuts="auto"))] == [0, 96, 144, 12, 90]
    # Handles are clamped to the media: 12 before frame 5 is frame 0, 12 after b-2 stays in b.
    wide = pieces(plan_conform(path, handles=40))
    assert wide[0][1] == 0 and all(end <= {"a.mp4": 200, "b.mov": 150}[name] for name, _, end, _ in wide)


def test_the_same_cut_read_back_from_a_cmx_3600_edl_plans_the_same_pieces(footage):
    timeline = edit(footage)
    for track in timeline.tracks:  # what an EDL holds: cuts and dissolves, no speed effects
        for item in list(track):
            if isinstance(item, otio.schema.Clip) and (item.effects or item.name == "music"):
                track.remove(item)
    otio.adapters.write_to_file(timeline, str(footage / "cut2.otio"))
    otio.adapters.write_to_file(timeline, str(footage / "cut.edl"))
    assert "* FROM CLIP: footage/a.mp4" in (footage / "cut.edl").read_text()
    native, edl = plan_conform(footage / "cut2.otio"), plan_conform(footage / "cut.edl", rate=R)
    assert [p[:3] for p in pieces(edl)] == [p[:3] for p in pieces(native)] and len(edl.pieces) == 4


def test_what_cannot_be_conformed_is_said_in_one_line_each(footage, tmp_path):
    with pytest.raises(ConformError, match=r"^timeline .*/none\.otio not found$"):
        plan_conform(tmp_path / "none.otio")
    (tmp_path / "bad.otio").write_text("{not json")
    with pytest.raises(ConformError, match=r"^timeline .*/bad\.otio: OpenTimelineIO cannot read it \(.*\); "
                                           r"accepted: .*\.edl.*\.otio"):
        plan_conform(tmp_path / "bad.otio")
    empty = otio.schema.Timeline()
    empty.tracks.append(otio.schema.Track(kind=otio.schema.TrackKind.Audio))
    otio.adapters.write_to_file(empty, str(tmp_path / "empty.otio"))
    with pytest.raises(ConformError, match="^the timeline has no video clip; accepted: "):
        plan_conform(tmp_path / "empty.otio")
    lost = otio.schema.Timeline()
    lost.tracks.append(otio.schema.Track(kind=otio.schema.TrackKind.Video))
    lost.tracks[0].extend([clip("one", "reel1.mov", 0, 5), clip("two", "/gone/reel2.mov", 0, 5)])
    otio.adapters.write_to_file(lost, str(tmp_path / "lost.otio"))
    with pytest.raises(ConformError) as e:
        plan_conform(tmp_path / "lost.otio", search=[footage / "footage"])
    assert str(e.value).splitlines() == [
        f"clip 'one': media reel1.mov not found (looked beside lost.otio and in {footage / 'footage'})",
        f"clip 'two': media /gone/reel2.mov not found (looked beside lost.otio and in {footage / 'footage'})"]
    # --search finds a file of that name elsewhere.
    moved = otio.schema.Timeline()
    moved.tracks.append(otio.schema.Track(kind=otio.schema.TrackKind.Video))
    moved.tracks[0].append(clip("x", "/old/disk/a.mp4", 0, 5))
    otio.adapters.write_to_file(moved, str(tmp_path / "moved.otio"))
    assert plan_conform(tmp_path / "moved.otio", search=[footage / "footage"]).pieces[0].media.path == \
        footage / "footage" / "a.mp4"
    with pytest.raises(ConformError, match=r"^--handles -1: accepted: an integer >= 0$"):
        plan_conform(tmp_path / "moved.otio", handles=-1)
    # A clip without a source range uses its media's available range; without either it is said.
    whole = otio.schema.Timeline()
    whole.tracks.append(otio.schema.Track(kind=otio.schema.TrackKind.Video))
    ref = otio.schema.ExternalReference(target_url=str(footage / "footage" / "a.mp4"),
                                        available_range=otio.opentime.TimeRange(rt(0), rt(200)))
    whole.tracks[0].extend([otio.schema.Clip(name="all", media_reference=ref)])
    otio.adapters.write_to_file(whole, str(tmp_path / "whole.otio"))
    assert [(p.start, p.end) for p in plan_conform(tmp_path / "whole.otio").pieces] == [(0, 200)]
    whole.tracks[0][0].media_reference.available_range = None
    otio.adapters.write_to_file(whole, str(tmp_path / "whole.otio"))
    with pytest.raises(ConformError, match=r"^clip 'all': no source range, and its media reference gives no "):
        plan_conform(tmp_path / "whole.otio")


def test_merging_is_pure_arithmetic():
    media = Media(Path("m.mov"), R, 100)
    uses = [Use("x", 50, 60), Use("y", 0, 3), Use("z", 61, 62)]
    assert [(p.start, p.end) for p in merge_uses(media, uses, 2, merge_gap=0)] == [(0, 5), (48, 64)]
    assert [(p.start, p.end) for p in merge_uses(media, uses, 2, merge_gap=43)] == [(0, 64)]
    assert [(p.start, p.end) for p in merge_uses(media, [Use("e", 95, 100)], 12)] == [(83, 100)]


def test_uav_conform_plan_prints_the_pieces_and_the_summary(footage):
    path = footage / "cut.otio"
    otio.adapters.write_to_file(edit(footage), str(path))
    run = subprocess.run([UAV, "conform", str(path), "--plan", "--handles", "4"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == f"{footage / 'footage' / 'a.mp4'}: frames 1-53 (53 frames) for a-freeze, a-1, a-2"
    assert lines[-2:] == ["5 pieces from 2 sources: the edit uses 101 frames, the conform renders 155 with 4-frame "
                          "handles, of 350 in the sources (44%)", "(a render moves each piece's start back by up to 5 "
                          "frames, onto its scene's window grid)"]
    bad = subprocess.run([UAV, "conform", str(path), "--plan", "--handles", "-2"], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr == "uav conform: --handles -2: accepted: an integer >= 0\n"


def test_prompt_auto_gives_each_source_of_an_edit_one_captions_file_and_captions_refuse_several(footage, tmp_path):
    from vs_uav.app.job import JobError
    from vs_uav.app.relink import conform_jobs
    from vs_uav.media.encoder import EncoderSettings
    from vs_uav.settings import UpscaleSettings

    path = footage / "captions-cut.otio"
    otio.adapters.write_to_file(edit(footage), str(path))
    plan = plan_conform(path, handles=4)
    jobs = conform_jobs(plan, tmp_path, UpscaleSettings(prompt="auto"), EncoderSettings())
    assert {(j.source.name, Path(j.encoder.captions).name) for j in jobs} == {("a.mp4", "a.captions.tsv"),
                                                                             ("b.mov", "b.captions.tsv")}
    assert all(j.captioner == "florence-2" and j.settings.prompt == "" for j in jobs)
    with pytest.raises(JobError, match=r"^--captions c\.tsv: accepted for an edit of one source; this one uses 2: "
                                       r"use --prompt auto"):
        conform_jobs(plan, tmp_path, UpscaleSettings(), EncoderSettings(captions="c.tsv"))
