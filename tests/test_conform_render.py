"""Conform, rendered (vs_uav.app.relink) and excerpts (uav upscale --frames): only the pieces an
edit uses are rendered, each with the source's frame numbers, its part of the audio and the
timecode of its first frame; the relinked timeline shows, frame for frame, the whole source's
render of the same source frames (the exactness the README states); the same cut read back
from the relinked EDL, FCP XML and FCPXML. Real OpenTimelineIO, real vspipe and ffmpeg, the
tiny reference model."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import opentimelineio as otio
import pytest
from conftest import MODEL_DIR

from vs_uav.app.conform import plan_conform, video_clips
from vs_uav.app.relink import piece_output, relink, write_timelines
from vs_uav.core.tiling import WINDOW_STRIDE, on_window_grid
from vs_uav.media.encoder import EncoderSettings
from vs_uav.media.timecode import frames_timecode, shift_timecode, timecode_frames

UAV = str(Path(sys.executable).parent / "uav")
R = 25
STEPS = 2
# Frames an aligned cold start needs before a frame equals the whole render's (README,
# "Conform": 6 x steps - 3), and frames a piece's end needs after it (7 x steps + 3).
WARM, TAIL = 6 * STEPS - 3, 7 * STEPS + 3
RENDER = ["--model", str(MODEL_DIR), "--steps", str(STEPS), "--codec", "ffv1"]


def source(path: Path, frames: int, timecode: str = "", audio: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sound = ["-f", "lavfi", "-i", f"sine=frequency=440:duration={frames / R}"] if audio else []
    tc = ["-timecode", timecode] if timecode else []
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size=32x24:rate={R}:duration="
                    f"{frames / R}", *sound, *tc, "-c:v", "libx264", *(["-c:a", "aac"] if audio else []), str(path)],
                   check=True)
    return path


def rgb(path: Path) -> np.ndarray:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, 96, 128, 3).astype(int)


def samples(path: Path, *trim: str) -> np.ndarray:
    raw = subprocess.run(["ffmpeg", "-v", "error", *trim, "-i", str(path), "-map", "0:a:0", "-f", "s16le", "-ac", "1",
                          "-ar", "44100", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.int16).astype(int)


def tags(path: Path) -> str:
    return subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream_tags=timecode:format_tags=timecode",
                           "-of", "default=nw=1", str(path)], capture_output=True, text=True).stdout.lower()


def test_timecodes_count_frames_and_drop_frame_numbers():
    ntsc = Fraction(30000, 1001)
    assert timecode_frames("01:00:00:00", Fraction(25)) == 90000
    assert shift_timecode("01:00:00:00", 30, Fraction(25)) == "01:00:01:05"
    # Drop frame: 00:01:00;00 and ;01 do not exist; every tenth minute keeps them.
    assert frames_timecode(1800, ntsc, drop=True) == "00:01:00;02"
    assert frames_timecode(17982, ntsc, drop=True) == "00:10:00;00"
    assert all(timecode_frames(frames_timecode(n, ntsc, True), ntsc) == n for n in (0, 1799, 1800, 17982, 107892))
    assert shift_timecode("00:59:59;29", 1, ntsc) == "01:00:00;00"
    assert timecode_frames("01:00:00:0", Fraction(10)) == 36000  # ffmpeg writes one digit of frames below 11 fps
    with pytest.raises(ValueError, match=r"^timecode '1:00:61:00': minutes and seconds below 60"):
        timecode_frames("1:00:61:00", Fraction(25))


def test_a_piece_starts_on_its_scenes_window_grid():
    assert [on_window_grid(s, 0) for s in (0, 5, 6, 31, 36)] == [0, 0, 6, 30, 36]
    assert on_window_grid(31, 29) == 29 and on_window_grid(40, 29) == 35 and WINDOW_STRIDE == 6
    with pytest.raises(ValueError, match=r"^anchor=9, start=3; accepted: 0 <= anchor <= start$"):
        on_window_grid(3, 9)


def test_a_piece_inside_a_later_scene_aligns_to_that_scenes_first_frame(tmp_path):
    import vapoursynth as vs

    from vs_uav.vsfilter.scenes import scene_start

    shot = tmp_path / "spliced.mkv"  # two shots: the second starts at frame 60
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size=64x48:rate={R}:duration=2.4",
                    "-f", "lavfi", "-i", f"mandelbrot=size=64x48:rate={R}", "-filter_complex",
                    "[1]trim=end_frame=60,setpts=PTS-STARTPTS[b];[0][b]concat=n=2", "-c:v", "ffv1", str(shot)],
                   check=True)
    video = vs.core.bs.VideoSource(str(shot))
    assert scene_start(video, 75, "auto", 0.1, limit=100) == 60 and scene_start(video, 30, "auto", 0.1, 100) == 0
    assert scene_start(video, 75, "auto", 0.1, limit=10) is None  # the cut lies further back than it looks
    assert scene_start(video, 75, "none", 0.1, limit=10) == 0
    timeline = otio.schema.Timeline()
    timeline.tracks.append(otio.schema.Track(kind=otio.schema.TrackKind.Video))
    timeline.tracks[0].append(clip("late", str(shot), 80, 10))
    otio.adapters.write_to_file(timeline, str(tmp_path / "late.otio"))
    piece = plan_conform(tmp_path / "late.otio", handles=4, scene_cuts="auto").pieces[0]
    assert (piece.start, piece.end) == (on_window_grid(76, 60), 94) == (72, 94)


@pytest.mark.slow
def test_frames_renders_an_excerpt_with_its_audio_and_timecode(tmp_path):
    src = source(tmp_path / "take.mov", 60, timecode="01:00:00:00", audio=True)
    out = tmp_path / "take.10-29.mkv"
    run = subprocess.run([UAV, "upscale", str(src), "-o", str(out), "--frames", "10-29", *RENDER],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert len(rgb(out)) == 20
    assert "timecode=01:00:00:10" in tags(out)  # frame 10's timecode, so an editor relinks by it
    # Its audio is the source's from frame 10's time for 20 frames (0.8 s), cut to the sample.
    got, want = samples(out), samples(src, "-ss", "0.4", "-t", "0.8")
    assert abs(len(got) - 0.8 * 44100) <= 2 and np.abs(got[:len(want)] - want[:len(got)]).max() <= 1
    for given, said in (("5-2", "--frames '5-2': accepted: FIRST-LAST"), ("ten", "--frames 'ten': accepted: "),
                        ("50-60", "--frames 50-60: the source has frames 0-59; accepted: ")):
        bad = subprocess.run([UAV, "upscale", str(src), "-o", str(tmp_path / "bad.mkv"), "--frames", given, *RENDER],
                             capture_output=True, text=True, timeout=120)
        assert bad.returncode == 1 and bad.stderr.startswith(f"uav upscale: {said}"), bad.stderr
        assert bad.stderr.count("\n") == 1 and not (tmp_path / "bad.mkv").exists()


def clip(name: str, url: str, start: int, duration: int, *effects) -> "otio.schema.Clip":
    rt = lambda n: otio.opentime.RationalTime(n, R)  # noqa: E731
    c = otio.schema.Clip(name=name, media_reference=otio.schema.ExternalReference(target_url=url),
                         source_range=otio.opentime.TimeRange(rt(start), rt(duration)))
    c.effects.extend(effects)
    return c


def edit(a: str, b: str, effects: bool = True) -> "otio.schema.Timeline":
    """Two overlapping clips of a and a repeat of them, a far one, a 50 % slow motion, a gap, a
    dissolve between two parts of b (timecode 01:00:00:00), an audio track."""
    hour = 3600 * R
    video = otio.schema.Track(name="V1", kind=otio.schema.TrackKind.Video)
    video.extend([clip("a-1", a, 30, 8), clip("a-2", a, 34, 8),
                  otio.schema.Gap(source_range=otio.opentime.TimeRange(otio.opentime.RationalTime(0, R),
                                                                       otio.opentime.RationalTime(5, R)))])
    if effects:
        video.append(clip("a-slow", a, 100, 8, otio.schema.LinearTimeWarp(time_scalar=0.5)))
    video.extend([clip("b-1", b, hour + 40, 8), otio.schema.Transition(in_offset=otio.opentime.RationalTime(2, R),
                                                                       out_offset=otio.opentime.RationalTime(2, R)),
                  clip("b-2", b, hour + 48, 6), clip("a-again", a, 32, 6)])
    audio = otio.schema.Track(name="A1", kind=otio.schema.TrackKind.Audio)
    audio.append(clip("music", "/nowhere/music.wav", 0, 40))
    timeline = otio.schema.Timeline(name="cut")
    timeline.tracks.extend([video, audio])
    for c in timeline.find_clips():  # what an editor's export says of its media
        n = {a: (0, 140), b: (hour, 90)}.get(c.media_reference.target_url, (0, 40))
        c.media_reference.available_range = otio.opentime.TimeRange(otio.opentime.RationalTime(n[0], R),
                                                                    otio.opentime.RationalTime(n[1], R))
    return timeline


def shown(timeline) -> list[tuple[str, Path, list[int]]]:
    """Each video clip's (name, file, frames of the file it shows), by OpenTimelineIO's ranges:
    the clip's source range less its media's available start, at the file's rate."""
    out = []
    for c in video_clips(timeline):
        ref = c.media_reference
        url = ref.target_url
        path = Path(url[len("file://"):] if url.startswith("file://") else url)
        first = c.trimmed_range().start_time.value - (ref.available_range.start_time.value
                                                       if ref.available_range else 0)
        speed = next((e.time_scalar for e in c.effects if isinstance(e, otio.schema.LinearTimeWarp)), 1.0)
        count = int(c.trimmed_range().duration.value)
        out.append((c.name, path, [int(first + int(i * speed)) for i in range(count)]))
    return out


@pytest.mark.slow
def test_conform_renders_what_the_edit_uses_and_relinks_it_frame_for_frame(tmp_path):
    source(tmp_path / "footage" / "a.mp4", 140)
    b = source(tmp_path / "footage" / "b.mov", 90, timecode="01:00:00:00", audio=True)
    cut = tmp_path / "cut.otio"
    otio.adapters.write_to_file(edit("footage/a.mp4", str(b)), str(cut))
    folder, handles = tmp_path / "restored", max(WARM, TAIL)
    run = subprocess.run([UAV, "conform", str(cut), "-o", str(folder), "--handles", str(handles), *RENDER,
                          "--scene-cuts", "none"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    # a: 30-41 and 32-37 merge with 17-frame handles (13-58), the slow clip shows 100-103 (83-120);
    # they lie 24 frames apart, closer than twice the handles: one piece, its start on the grid.
    # b: b-1 and b-2 with the dissolve's 2 frames past each, 40-53, with handles 23-70; its start
    # moved to 18.
    pieces = sorted(p.name for p in folder.glob("*.uav.mkv"))
    assert pieces == ["a.12-120.uav.mkv", "b.18-70.uav.mkv"], pieces
    assert (len(rgb(folder / pieces[0])), len(rgb(folder / pieces[1]))) == (109, 53)
    assert "timecode=01:00:00:18" in tags(folder / pieces[1]) and "timecode=00:00:00:12" in tags(folder / pieces[0])
    assert run.stdout.splitlines()[-1] == ("2 pieces from 2 sources: the edit uses 30 frames, the conform renders "
                                           "162 with 17-frame handles, of 230 in the sources (70%)"), run.stdout
    relinked = otio.adapters.read_from_file(str(folder / "cut.uav.otio"))
    original = otio.adapters.read_from_file(str(cut))
    # Everything but the video clips' media is as it was: tracks, gaps, transitions, audio.
    assert [[type(i).__name__ for i in t] for t in relinked.tracks] == [[type(i).__name__ for i in t]
                                                                          for t in original.tracks]
    assert relinked.tracks[1][0].media_reference.target_url == "/nowhere/music.wav"
    whole = {name: rgb(_whole_render(tmp_path / "footage" / name, tmp_path)) for name in ("a.mp4", "b.mov")}
    for (name, path, frames), (_, src, src_frames) in zip(shown(relinked), shown(original)):
        restored = rgb(path)
        # The relinked clip shows the same source frames (its file starts at the piece's first) ...
        first = int(path.name.split(".")[1].split("-")[0])
        assert [first + f for f in frames] == src_frames, name
        # ... and they are the whole source's render of those frames, bit for bit.
        for f, s in zip(frames, src_frames):
            assert np.array_equal(restored[f], whole[Path(src).name][s]), (name, f, s)


def _whole_render(src: Path, tmp_path: Path) -> Path:
    out = tmp_path / f"whole-{src.stem}.mkv"
    run = subprocess.run([UAV, "upscale", str(src), "-o", str(out), *RENDER, "--scene-cuts", "none", "--audio",
                          "none"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return out


@pytest.mark.parametrize("suffix", [".edl", ".xml", ".fcpxml"])
def test_the_relinked_timeline_in_the_edits_format_reads_back_as_the_same_cut(tmp_path, suffix):
    a = source(tmp_path / "footage" / "a.mp4", 140)
    b = source(tmp_path / "footage" / "b.mov", 90, timecode="01:00:00:00")
    path = tmp_path / f"cut{suffix}"
    otio.adapters.write_to_file(edit(str(a), str(b), effects=False), str(path))
    plan = plan_conform(path, handles=4, rate=R if suffix == ".edl" else None)
    outputs = [piece_output(p, tmp_path / "restored", EncoderSettings(codec="ffv1")) for p in plan.pieces]
    (tmp_path / "restored").mkdir()
    written, note = write_timelines(relink(plan, outputs), path, tmp_path / "restored")
    assert [p.name for p in written] == ["cut.uav.otio", f"cut.uav{suffix}"] and note == ""
    options = {"rate": R} if suffix == ".edl" else {}
    before = otio.adapters.read_from_file(str(path), **options)
    after = otio.adapters.read_from_file(str(written[1]), **options)
    cut = lambda t: [(c.name, c.trimmed_range(), c.range_in_parent()) for c in video_clips(t)]  # noqa: E731
    assert cut(after) == cut(before)
    urls = {c.media_reference.target_url for c in video_clips(after)}
    assert urls == {o.absolute().as_uri() for o in outputs}, urls

