"""Conform of the edits editors write: media found by path, clip name, reel, a comment's
Windows or macOS path, and timecode (as an editing system relinks); generators, gaps and
nested stacks left as they are; clips past their media's end said in one line.

The edits are written here in each editor's style (Avid, Premiere, Nucoda and Resolve CMX 3600
lists; an .otio with a title generator, a nested stack and a dissolve) and read by the real
OpenTimelineIO adapters; the media are real files with start timecodes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import opentimelineio as otio
import pytest

from vs_uav.app.conform import ConformError, describe, plan_conform
from vs_uav.app.lookup import file_name

UAV = str(Path(sys.executable).parent / "uav")
R = 25


def media(path: Path, frames: int, timecode: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size=32x24:rate={R}",
                    "-frames:v", str(frames), "-timecode", timecode, "-c:v", "libx264", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """Media as a shoot leaves them: camera clips in day folders (one name twice, on two days),
    a tape capture named by its reel, a graded shot."""
    root = tmp_path_factory.mktemp("library")
    media(root / "media" / "day1" / "A001C003.mov", 50, "01:00:00:00")
    media(root / "media" / "day2" / "A001C003.mov", 50, "02:00:00:00")
    media(root / "media" / "tapes" / "TAPE07.mov", 60, "10:00:00:00")
    media(root / "media" / "grade" / "shot_010.mov", 40, "00:59:59:00")
    media(root / "media" / "grade" / "interview.mov", 40, "00:00:00:00")
    (root / "edits").mkdir()
    return root


def edl(root: Path, name: str, body: str) -> Path:
    path = root / "edits" / name
    path.write_text("TITLE: CUT\nFCM: NON-DROP FRAME\n\n" + body, encoding="utf-8")
    return path


def plan(root: Path, path: Path, *extra: Path, **options):
    return plan_conform(path, handles=0, search=[root / "media", *extra], rate=R, **options)


def found(p) -> dict[str, tuple[str, str]]:
    return {u.clip: (str(piece.media.path), u.found) for piece in p.pieces for u in piece.uses}


STYLES = {
    # Avid: the clip name (with the file's extension) and the reel column.
    "avid.edl": ("001  A001C003 V     C        02:00:00:10 02:00:01:00 00:00:00:00 00:00:00:15\n"
                 "* FROM CLIP NAME:  A001C003.MOV\n", "day2/A001C003.mov", "and timecode"),
    # Premiere: AX reels, the clip name with its extension.
    "premiere.edl": ("001  AX       V     C        00:00:00:05 00:00:01:00 00:00:00:00 00:00:00:20\n"
                     "* FROM CLIP NAME: interview.mov\n", "grade/interview.mov", "clip name"),
    # Nucoda: a Windows path in FROM FILE, reduced to its file name.
    "nucoda.edl": ("001  shot_010 V     C        00:59:59:10 01:00:00:00 00:00:00:00 00:00:00:15\n"
                   "* FROM FILE: S:\\grade\\shots\\shot_010.mov\n", "grade/shot_010.mov", "file name"),
    # Resolve: the clip name without extension, a macOS path in a SOURCE FILE comment.
    "resolve.edl": ("001  TAPE07   V     C        10:00:01:00 10:00:02:00 00:00:00:00 00:00:01:00\n"
                    "* FROM CLIP NAME: TAPE07\n* SOURCE FILE: /Volumes/RAID/capture/TAPE07.mov\n",
                    "tapes/TAPE07.mov", "file name"),
    # A reel and nothing else.
    "reel-only.edl": ("001  TAPE07   V     C        10:00:00:00 10:00:00:10 00:00:00:00 00:00:00:10\n",
                      "tapes/TAPE07.mov", "reel"),
}


@pytest.mark.parametrize("name", list(STYLES))
def test_each_editors_edl_finds_its_media_and_the_plan_says_how(library, name):
    body, where, how = STYLES[name]
    p = plan(library, edl(library, name, body))
    (path, said), = found(p).values()
    assert path.endswith(where) and how in said, (path, said)
    lines = describe(p)
    assert f"(by {said})" in lines[0] or said == "path"
    assert all(piece.frames > 0 and 0 <= piece.start < piece.end <= piece.media.frames for piece in p.pieces)


def test_a_windows_or_unc_path_is_reduced_to_its_file_name():
    assert file_name("S:\\grade\\shots\\x.exr") == "x.exr"
    assert file_name("\\\\server\\share\\reel 1\\y.mov") == "y.mov"
    assert file_name("/Volumes/RAID/z.mov") == "z.mov"


def test_one_name_on_two_days_that_timecode_cannot_tell_apart_is_one_line(library):
    body = ("001  A001C003 V     C        01:00:00:10 01:00:01:00 00:00:00:00 00:00:00:15\n"
            "* FROM CLIP NAME:  A001C003.MOV\n")
    p = plan(library, edl(library, "day1.edl", body))  # 01:00:00:10 lies in day 1's range only
    assert next(iter(found(p).values()))[0].endswith("day1/A001C003.mov")
    ambiguous = ("001  A001C003 V     C        05:00:00:10 05:00:01:00 00:00:00:00 00:00:00:15\n"
                 "* FROM CLIP NAME:  A001C003.MOV\n")
    with pytest.raises(ConformError, match=r"matches several files \(.*day1/A001C003\.mov, .*day2/A001C003\.mov\); "
                                           r"accepted: one, e\.g\. named in --media-map") as err:
        plan(library, edl(library, "ambiguous.edl", ambiguous))
    assert "\n" not in str(err.value)


def test_a_media_map_names_what_nothing_else_finds(library, tmp_path):
    body = "001  REEL99   V     C        10:00:00:00 10:00:00:10 00:00:00:00 00:00:00:10\n"
    path = edl(library, "mapped.edl", body)
    with pytest.raises(ConformError, match=r"clip .*: media .* not found \(looked beside .* for .*reel 'REEL99'"):
        plan(library, path)
    mapping = tmp_path / "map.csv"
    mapping.write_text(f"name,path\nREEL99,{library / 'media' / 'tapes' / 'TAPE07.mov'}\n", encoding="utf-8")
    p = plan(library, path, media_map=mapping)
    assert next(iter(found(p).values()))[0].endswith("tapes/TAPE07.mov")
    mapping.write_text("REEL99\n", encoding="utf-8")
    with pytest.raises(ConformError, match=r"--media-map .*map\.csv line 1: 'REEL99'; accepted: name,path"):
        plan(library, path, media_map=mapping)


def test_a_clip_past_its_medias_end_is_one_line_and_clamp_renders_what_exists(library):
    body = ("001  interview V     C        00:00:01:00 00:00:03:00 00:00:00:00 00:00:02:00\n"
            "* FROM CLIP NAME: interview.mov\n")
    path = edl(library, "long.edl", body)
    with pytest.raises(ConformError, match=r"^clip 'interview.mov' needs frames 25-74 of interview\.mov, which holds "
                                           r"frames 0-39; accepted: a clip within its media, or --clamp"):
        plan(library, path)
    p = plan(library, path, clamp=True)
    assert [(x.start, x.end) for x in p.pieces] == [(25, 40)] and "rendered clamped" in p.warnings[0]
    run = subprocess.run([UAV, "conform", str(path), "--plan", "--rate", str(R), "--handles", "0", "--search",
                          str(library / "media")], capture_output=True, text=True)
    assert run.returncode == 1 and run.stderr.count("\n") == 1 and "--clamp" in run.stderr, run.stderr
    assert "-" not in run.stdout.split("renders")[-1][:4]  # never a negative count


def test_generators_gaps_and_nested_stacks_are_left_as_they_are(library, tmp_path):
    """An .otio as Premiere's and Hiero's exports read: a title generator, a gap, a nested stack
    holding a clip, a dissolve, markers, an audio track."""
    rt = lambda f: otio.opentime.RationalTime(f, R)  # noqa: E731
    interview = (library / "media" / "grade" / "interview.mov").as_uri()

    def clip(name: str, start: int, length: int) -> otio.schema.Clip:
        return otio.schema.Clip(name=name, media_reference=otio.schema.ExternalReference(target_url=interview),
                                source_range=otio.opentime.TimeRange(rt(start), rt(length)))

    title = otio.schema.Clip(name="test_title", media_reference=otio.schema.GeneratorReference(
        generator_kind="Text"), source_range=otio.opentime.TimeRange(rt(0), rt(25)))
    nested = otio.schema.Stack(name="compound", children=[otio.schema.Track(children=[clip("inner", 20, 5)])],
                               source_range=otio.opentime.TimeRange(rt(0), rt(5)))
    video = otio.schema.Track(kind=otio.schema.TrackKind.Video, children=[
        title, clip("a", 2, 8), otio.schema.Transition(in_offset=rt(2), out_offset=rt(2)), clip("b", 12, 5),
        otio.schema.Gap(source_range=otio.opentime.TimeRange(rt(0), rt(10))), nested])
    video[1].markers.append(otio.schema.Marker(name="note", marked_range=otio.opentime.TimeRange(rt(3), rt(1))))
    timeline = otio.schema.Timeline(name="cut")
    timeline.tracks.extend([video, otio.schema.Track(kind=otio.schema.TrackKind.Audio)])
    path = tmp_path / "cut.otio"
    otio.adapters.write_to_file(timeline, str(path))
    p = plan_conform(path, handles=0)
    assert sorted(u.clip for piece in p.pieces for u in piece.uses) == ["a", "b", "inner"]
    assert p.left_alone == ["1 generator (Text)", "1 transition (its frames rendered with the clips beside it)",
                            "1 marker", "1 gap", "1 audio track"] or set(p.left_alone) == {
        "1 generator (Text)", "1 transition (its frames rendered with the clips beside it)", "1 marker", "1 gap",
        "1 audio track"}
    assert describe(p)[-1].startswith("left as they are: ")

    from vs_uav.app.relink import relink

    outputs = [tmp_path / f"piece{i}.mkv" for i in range(len(p.pieces))]
    after = relink(p, outputs)
    kept = [c for c in after.find_clips() if isinstance(c.media_reference, otio.schema.GeneratorReference)]
    assert [(c.name, c.media_reference.generator_kind, c.source_range) for c in kept] == [
        ("test_title", "Text", title.source_range)]
    assert len(after.tracks[0]) == len(video) and isinstance(after.tracks[0][4], otio.schema.Gap)


def test_an_edls_rate_is_found_from_its_timecodes_or_its_media_and_a_wrong_rate_is_one_line(library):
    # Frame 24 in a timecode: not 24 fps; the plan reads it at 25 without --rate.
    body = ("001  AX       V     C        00:00:00:24 00:00:01:10 00:00:00:00 00:00:00:11\n"
            "* FROM CLIP NAME: interview.mov\n")
    path = edl(library, "pal.edl", body)
    p = plan_conform(path, handles=0, search=[library / "media"])
    assert p.rate == 25 and [(x.start, x.end) for x in p.pieces] == [(24, 35)]
    # Frames below 24 only: 24 from the timecodes, but the media's one rate (25) wins.
    low = edl(library, "low.edl", "001  AX       V     C        00:00:00:10 00:00:00:20 00:00:00:00 00:00:00:10\n"
                                  "* FROM CLIP NAME: interview.mov\n")
    assert plan_conform(low, handles=0, search=[library / "media"]).rate == 25
    with pytest.raises(ConformError, match=r"^--rate 24: the timecodes of pal\.edl count more frames a second .*; "
                                           r"accepted: the edit's frame rate, e\.g\. --rate 25"):
        plan_conform(path, handles=0, search=[library / "media"], rate=24)


def test_a_drop_frame_list_at_2997(tmp_path):
    footage = tmp_path / "ntsc.mov"
    footage.parent.mkdir(exist_ok=True)
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=32x24:rate=30000/1001",
                    "-frames:v", "200", "-timecode", "00:00:59;00", "-c:v", "libx264", "-preset", "ultrafast",
                    str(footage)], check=True)
    path = tmp_path / "ntsc.edl"
    path.write_text("TITLE: NTSC\nFCM: DROP FRAME\n\n"
                    "001  AX       V     C        00:01:00;02 00:01:00;12 00:00:00;00 00:00:00;10\n"
                    "* FROM CLIP NAME: ntsc.mov\n", encoding="utf-8")
    p = plan_conform(path, handles=0)
    # 00:00:59;00 to 00:01:00;02 is 30 frames: minute 1 has no ;00 and ;01 (every minute but the tenth).
    assert abs(p.rate - 30000 / 1001) < 1e-6 and [(x.start, x.end) for x in p.pieces] == [(30, 40)]


def test_an_otio_from_a_newer_opentimelineio_is_one_line_naming_the_schema(tmp_path):
    path = tmp_path / "new.otio"
    path.write_text('{"OTIO_SCHEMA": "Timeline.1", "name": "x", "tracks": {"OTIO_SCHEMA": "Stack.1", "children": [],'
                    ' "markers": [{"OTIO_SCHEMA": "Marker.9", "name": "m"}]}}', encoding="utf-8")
    with pytest.raises(ConformError, match=r"written by a newer OpenTimelineIO \(schema Marker\.9; OpenTimelineIO "
                                           r"[0-9.]+ reads up to Marker\.2\); accepted: ") as err:
        plan_conform(path)
    assert "\n" not in str(err.value)


def test_a_relinked_edl_that_loses_a_dissolves_second_source_says_so(library, tmp_path):
    """Read back, a CMX 3600 list gives a dissolve's incoming clip the outgoing clip's file: the
    relinked .edl is written with one warning line, and the .otio stays the reference."""
    from vs_uav.app.relink import relink, write_timelines

    body = ("001  AX       V     C        00:00:00:02 00:00:00:12 00:00:00:00 00:00:00:10\n"
            "* FROM CLIP NAME: interview.mov\n"
            "002  AX       V     C        00:00:00:12 00:00:00:12 00:00:00:10 00:00:00:10\n"
            "002  AX       V     D    005 00:59:59:05 00:59:59:15 00:00:00:10 00:00:00:20\n"
            "* FROM CLIP NAME: interview.mov\n* TO CLIP NAME: shot_010.mov\n")
    path = edl(library, "dissolve.edl", body)
    p = plan(library, path)
    assert {Path(piece.media.path).name for piece in p.pieces} == {"interview.mov", "shot_010.mov"}
    outputs = [tmp_path / f"{Path(piece.media.path).stem}.{piece.start}.mkv" for piece in p.pieces]
    written, note = write_timelines(relink(p, outputs), path, tmp_path, p.rate)
    assert [w.name for w in written] == ["dissolve.uav.otio", "dissolve.uav.edl"]
    # The adapter's round trip loses the second source: said in one line, the reference named.
    assert note.startswith("dissolve.uav.edl: its format loses 1 clip's media on the way back (clip 'shot_010.mov' "
                           "reads as 'interview.") and note.endswith("dissolve.uav.otio is the reference"), note
    back = otio.adapters.read_from_file(str(written[0]))
    names = {Path(c.media_reference.target_url).name for c in back.find_clips()}
    assert names == {o.name for o in outputs}  # the .otio keeps every clip's own piece


PREMIERE_XML = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE xmeml>
<xmeml version="4">
  <sequence id="sequence-1">
    <name>cut</name>
    <duration>60</duration>
    <rate><timebase>25</timebase><ntsc>FALSE</ntsc></rate>
    <media>
      <video>
        <track>
          <generatoritem id="title-1">
            <name>test_title</name>
            <duration>25</duration>
            <rate><timebase>25</timebase><ntsc>FALSE</ntsc></rate>
            <start>0</start><end>25</end><in>0</in><out>25</out>
            <effect>
              <name>Text</name><effectid>Text</effectid><effectcategory>Text</effectcategory>
              <effecttype>generator</effecttype><mediatype>video</mediatype>
            </effect>
          </generatoritem>
          <clipitem id="clipitem-1">
            <name>interview.mov</name>
            <duration>40</duration>
            <rate><timebase>25</timebase><ntsc>FALSE</ntsc></rate>
            <start>25</start><end>35</end><in>5</in><out>15</out>
            <file id="file-1">
              <name>interview.mov</name>
              <pathurl>file://localhost/D%3a/Projects/Footage/interview.mov</pathurl>
              <rate><timebase>25</timebase><ntsc>FALSE</ntsc></rate>
              <duration>40</duration>
              <timecode><rate><timebase>25</timebase><ntsc>FALSE</ntsc></rate><string>00:00:00:00</string>
                <frame>0</frame><displayformat>NDF</displayformat></timecode>
              <media><video><samplecharacteristics><width>32</width><height>24</height></samplecharacteristics>
              </video></media>
            </file>
          </clipitem>
        </track>
      </video>
    </media>
  </sequence>
</xmeml>
"""


def test_a_premiere_xml_with_a_title_and_a_windows_path_is_conformed(library, tmp_path):
    """Premiere's export: media as file://localhost/D%3a/... from the editor's Windows machine,
    a title as a generator item; the media is found by its file name, the title left alone."""
    path = library / "edits" / "premiere.xml"
    path.write_text(PREMIERE_XML, encoding="utf-8")
    p = plan(library, path)
    (where, how), = found(p).values()
    assert where.endswith("grade/interview.mov") and how == "file name 'interview.mov'"
    assert [(x.start, x.end) for x in p.pieces] == [(5, 15)]
    assert any(item.startswith("1 generator") for item in p.left_alone), p.left_alone
