"""Footage as users get it (issue 23): trimmed MP4s with an edit list, subtitles and a title,
HDR10, odd sizes, audio-only files and folders. Real files made by ffmpeg; the output checked
with ffprobe after running the ffmpeg command vs-uav builds on stand-in frames (the model adds
nothing to what is checked), and one real render for the odd size.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import pytest
from test_faithful import uav, video

from vs_uav.media.encoder import EncoderSettings
from vs_uav.media.output import ffmpeg_options, output_spec
from vs_uav.media.probe import probe
from vs_uav.media.script import prepare_source, reading_script

MASTER = "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,1)"


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True, capture_output=True)


def streams(path: Path, entries: str = "stream=codec_type,codec_name,start_time:format=duration:format_tags=title"
            ) -> dict:
    run = subprocess.run(["ffprobe", "-v", "error", "-show_entries", entries, "-of", "json", str(path)],
                         capture_output=True, text=True, check=True)
    return json.loads(run.stdout)


def start(path: Path, kind: str) -> float:
    return float(next(s for s in streams(path)["streams"] if s["codec_type"] == kind)["start_time"])


def encode(source: Path, out: Path, codec: str = "ffv1", pix_fmt: str = "", media=None) -> str:
    """The ffmpeg command vs-uav runs for ``source`` into ``out``, fed the right number of stand-in
    frames; returns the spec's note."""
    media = media or probe(source, reading_script(source))
    encoder = EncoderSettings(codec=codec)
    spec = output_spec(media, encoder, container=out.suffix)
    frames = subprocess.Popen(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                               f"testsrc2=s={media.width}x{media.height}:r={media.fps or 25}", "-frames:v",
                               str(media.frames), "-pix_fmt", pix_fmt or spec.pix_fmt, "-strict", "-1", "-f",
                               "yuv4mpegpipe", "-"], stdout=subprocess.PIPE)
    run = subprocess.run(["ffmpeg", "-v", "error", "-y", *ffmpeg_options(source, encoder, spec), str(out)],
                         stdin=frames.stdout, capture_output=True, text=True)
    frames.stdout.close()
    frames.wait()
    assert run.returncode == 0, run.stderr
    return spec.note


@pytest.fixture(scope="module")
def trimmed(tmp_path_factory) -> Path:
    """An MP4 cut by stream copy 0.52 s in: an edit list over a GOP that starts at 0."""
    folder = tmp_path_factory.mktemp("trim")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25", "-f", "lavfi", "-i", "sine=sample_rate=48000", "-t",
           "2", "-c:v", "libx264", "-g", "50", "-c:a", "aac", str(folder / "clip.mp4"))
    ffmpeg("-ss", "0.52", "-i", str(folder / "clip.mp4"), "-c", "copy", str(folder / "trimmed.mp4"))
    return folder / "trimmed.mp4"


def test_an_mp4_edit_list_keeps_the_video_and_audio_start_and_duration(trimmed, tmp_path):
    media = probe(trimmed, reading_script(trimmed))
    assert media.frames == 37 and media.times is None  # 25 fps from 0, as a player presents it
    out = tmp_path / "o.mkv"
    encode(trimmed, out)
    assert start(out, "video") == start(trimmed, "video") == 0
    assert start(out, "audio") == pytest.approx(start(trimmed, "audio"), abs=0.022)  # within one AAC frame
    assert float(streams(out)["format"]["duration"]) == pytest.approx(
        float(streams(trimmed)["format"]["duration"]), abs=0.03)


def test_no_false_variable_rate_warning_and_the_warning_is_the_clis(trimmed, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    excerpt = probe(trimmed, reading_script(trimmed, ["clip = clip[:10]"]))
    assert excerpt.note == "" and excerpt.times is None and not caplog.records
    vfr = tmp_path / "vfr.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=32x24:rate=30", "-frames:v", "9", "-vf",
           "setpts='if(lt(N,4),N/30,4/30+(N-4)/10)/TB'", "-fps_mode", "vfr", "-c:v", "libx264", str(vfr))
    media = probe(vfr, reading_script(vfr, ["clip = clip[:5]"]))
    assert media.note.startswith("the source's frame rate varies, but the script changes its frame count (5 frames "
                                 "of 9)") and not caplog.records
    assert media.note in output_spec(media, EncoderSettings()).note  # what the CLI prints as 'uav ...: warning:'


@pytest.fixture(scope="module")
def subtitled(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("subs")
    (folder / "a.srt").write_text("1\n00:00:00,100 --> 00:00:00,300\nHello\n", encoding="utf-8")
    (folder / "b.ass").write_text(
        "[Script Info]\nScriptType: v4.00+\n\n[V4+ Styles]\nFormat: Name, Fontname, Fontsize\n"
        "Style: Default,Arial,20\n\n"
        "[Events]\nFormat: Layer, Start, End, Style, Text\nDialogue: 0,0:00:00.20,0:00:00.30,Default,{\\b1}Bold\n",
        encoding="utf-8")
    out = folder / "subs.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=32x24:rate=25", "-i", str(folder / "a.srt"), "-i",
           str(folder / "b.ass"), "-map", "0", "-map", "1", "-map", "2", "-frames:v", "10", "-c:v", "ffv1", "-c:s",
           "copy", "-metadata", "title=Le film", str(out))
    return out


def subtitle_times(path: Path) -> list[str]:
    packets = streams(path, "packet=pts_time,duration_time,stream_index:stream=codec_type")
    subs = {i for i, s in enumerate(packets["streams"]) if s["codec_type"] == "subtitle"}
    return sorted((p["pts_time"], p["duration_time"]) for p in packets["packets"] if p["stream_index"] in subs)


def test_subtitles_and_the_title_are_kept(subtitled, tmp_path):
    mkv, mp4 = tmp_path / "o.mkv", tmp_path / "o.mp4"
    assert encode(subtitled, mkv) == ""
    got = streams(mkv)
    assert [s["codec_name"] for s in got["streams"] if s["codec_type"] == "subtitle"] == ["subrip", "ass"]
    assert got["format"]["tags"]["title"] == "Le film" and subtitle_times(mkv) == subtitle_times(subtitled)
    note = encode(subtitled, mp4, codec="x264")
    assert note == (".mp4 holds text subtitles as mov_text only: the source's subrip, ass subtitles become mov_text "
                    "(their styling is lost; an .mkv output keeps them as they are)")
    got = streams(mp4)
    assert [s["codec_name"] for s in got["streams"] if s["codec_type"] == "subtitle"] == ["mov_text", "mov_text"]
    assert got["format"]["tags"]["title"] == "Le film"
    media = probe(subtitled, reading_script(subtitled))
    assert output_spec(media, EncoderSettings(), container=".avi").note == (
        ".avi cannot hold the source's subrip, ass subtitles: dropped (an .mkv output keeps them)")


def hdr_side_data(path: Path) -> list[dict]:
    run = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-read_intervals", "%+#1", "-show_frames",
                          "-of", "json", str(path)], capture_output=True, text=True, check=True)
    side = json.loads(run.stdout)["frames"][0].get("side_data_list", [])
    return [d for d in side if d.get("side_data_type", "").startswith(("Mastering", "Content light"))]


def test_hdr10_keeps_its_mastering_display_and_light_levels_and_says_the_model_is_sdr(tmp_path):
    source = tmp_path / "hdr.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25", "-frames:v", "3", "-c:v", "libx265", "-pix_fmt",
           "yuv420p10le", "-color_primaries", "bt2020", "-color_trc", "smpte2084", "-colorspace", "bt2020nc",
           "-x265-params", f"hdr10=1:master-display={MASTER}:max-cll=1000,400:log-level=error", str(source))
    assert len(hdr_side_data(source)) == 2
    out = tmp_path / "o.mkv"
    note = encode(source, out, codec="x265")
    assert note == ("the source is HDR (PQ) but the model was trained on SDR video: it is upscaled as it is (its code "
                    "values read as SDR) and tagged PQ again, with its mastering display and MaxCLL/MaxFALL")
    assert hdr_side_data(out) == hdr_side_data(source)
    v = video(out)
    assert (v["color_space"], v["color_primaries"], v["color_transfer"]) == ("bt2020nc", "bt2020", "smpte2084")
    media = probe(source, reading_script(source))
    assert output_spec(media, EncoderSettings(codec="ffv1")).note.endswith(
        "; ffv1 cannot carry its mastering display and MaxCLL/MaxFALL metadata (x265 does)")


def test_an_untagged_source_is_tagged_limited_range_by_every_codec(tmp_path):
    source = tmp_path / "plain.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=32x24:rate=25", "-frames:v", "1", "-c:v", "ffv1", "-pix_fmt",
           "yuv420p", str(source))
    media = probe(source, reading_script(source))
    assert media.range is None
    for codec, ext in (("x265", ".mkv"), ("x264", ".mp4"), ("ffv1", ".mkv"), ("prores", ".mov")):
        out = tmp_path / f"o-{codec}{ext}"
        encode(source, out, codec=codec, media=media)
        assert video(out)["color_range"] == "tv", codec


def test_an_audio_only_input_says_it_has_no_video_stream(tmp_path):
    audio = tmp_path / "song.m4a"
    ffmpeg("-f", "lavfi", "-i", "sine=duration=0.2", "-c:a", "aac", str(audio))
    with pytest.raises(ValueError, match="^input .*song.m4a: has no video stream; accepted: a video file$"):
        probe(audio, reading_script(audio))
    run = uav("script", str(audio), "--script", str(tmp_path / "s.vpy"), cwd=tmp_path, check=False)
    assert (run.returncode, run.stderr) == (1, f"uav script: input {audio}: has no video stream; accepted: a video "
                                               "file\n")


def test_a_folder_is_not_a_video(tmp_path):
    """uav script takes one video; uav upscale takes a folder as a queue of its videos, and one
    of frames only (no video in it) is refused with what to do about it."""
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "000001.png").write_bytes(b"")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("x")
    said = {("script", "frames"): f"input {tmp_path / 'frames'} is an image sequence; accepted: a video file (uav "
                                  "upscale reads image sequences, with --fps)",
            ("script", "notes"): f"input {tmp_path / 'notes'} is a folder without videos or images; accepted: a video "
                                 "file (or a folder of numbered images, or their pattern",
            ("upscale", "notes"): "input notes is a folder without videos; accepted: a video file or a folder of them "
                                  "(.mp4, .mkv, .mov, .m4v, ...) (or a folder of numbered images, or their pattern"}
    for (command, folder), line in said.items():
        run = uav(command, folder, cwd=tmp_path, check=False)
        assert run.returncode == 1 and run.stderr.count("\n") == 1, run.stderr
        assert run.stderr.startswith(f"uav {command}: {line}"), run.stderr


@pytest.fixture(scope="module")
def odd(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("odd") / "odd.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=98x56:rate=25", "-frames:v", "2", "-vf",
           "scale=97:55,setsar=1,format=yuv420p", "-c:v", "ffv1", str(path))
    return path


def test_an_odd_size_is_said_where_it_is_not_kept(odd, tmp_path):
    run = uav("script", str(odd), "--script", str(tmp_path / "s.vpy"), cwd=tmp_path)
    assert run.stderr == ("uav script: warning: BestSource reads the 97x55 8-bit 4:2:0 source as 96x54 (cropped to a "
                          "size its chroma subsampling divides); uav upscale keeps 97x55\n")
    video_file, media = prepare_source(odd, (), tmp_path)
    assert (media.width, media.height, media.format.subsampling, media.source_format.subsampling) == \
        (97, 55, "444", "420")


def test_an_odd_size_4_2_0_source_keeps_its_size(odd, tmp_path):
    # The script uav upscale writes, with a 4x point resize standing in for the model (which
    # returns its input's format at 4x), through vspipe into the ffmpeg command.
    from vs_uav.media.render import find_vspipe
    from vs_uav.media.script import _encoding_lines

    video_file, media = prepare_source(odd, (), tmp_path)
    spec = output_spec(media, EncoderSettings(codec="x265"), container=".mkv")
    script = tmp_path / "s.vpy"
    script.write_text("\n".join([reading_script(video_file), "clip = core.resize.Point(clip, clip.width * 4, "
                                  "clip.height * 4)", *_encoding_lines(spec), "clip.set_output()"]), encoding="utf-8")
    out = tmp_path / "o.mkv"
    pipe = subprocess.Popen([find_vspipe(), "-c", "y4m", str(script), "-"], stdout=subprocess.PIPE)
    subprocess.run(["ffmpeg", "-v", "error", "-y", *ffmpeg_options(odd, EncoderSettings(codec="x265"), spec),
                    str(out)], stdin=pipe.stdout, check=True, capture_output=True)
    pipe.stdout.close()
    assert pipe.wait() == 0
    v = video(out)
    assert (v["width"], v["height"], v["pix_fmt"], v["sample_aspect_ratio"]) == (388, 220, "yuv420p10le", "1:1")
    assert spec.note == ""


def test_chroma_siting_is_kept_or_said_for_every_codec(tmp_path):
    """Left-sited 4:2:2 (as most 4:2:2 masters are): kept where the format can signal it, else
    one line says the output reads 'unspecified' (issue 23, point 20)."""
    source = tmp_path / "sited.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=32x24:rate=25", "-frames:v", "1", "-c:v", "ffv1", "-pix_fmt",
           "yuv422p", "-chroma_sample_location", "left", str(source))
    media = probe(source, reading_script(source))
    assert media.chroma_location == 0
    for codec, ext, kept in (("x264", ".mkv", True), ("ffv1", ".mkv", True), ("prores", ".mkv", True),
                             ("prores", ".mov", False), ("x265", ".mkv", False)):
        out = tmp_path / f"o-{codec}{ext}"
        note = encode(source, out, codec=codec, media=media)
        assert (video(out).get("chroma_location", "unspecified") == "left") is kept, (codec, ext)
        assert ("chroma location reads unspecified (the frames are sited left" in note) is not kept, (codec, ext, note)
