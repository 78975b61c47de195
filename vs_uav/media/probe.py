"""What the output keeps of its source: pixel format, colour, geometry, field order and timing.

:func:`probe` reads the clip a script hands the filter (the script's first lines, evaluated
with VapourSynth: its format and the first frame's props, as BestSource sets them) and the
container (ffprobe: the field order and every frame's timestamp). :mod:`vs_uav.media.script`
turns the :class:`MediaInfo` and the chosen codec into the script's last lines and the
ffmpeg options that tag the output (y4m carries none of it: only size, rate and format).

VapourSynth is imported only by :func:`probe`; no torch.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional, Sequence

from vs_uav.media.children import child_options
from vs_uav.errors import one_line

logger = logging.getLogger(__name__)

UNSPECIFIED = 2  # H.273's "unspecified" matrix, primaries and transfer; VapourSynth and ffmpeg use H.273's codes

# VapourSynth's (ssw, ssh) as ffmpeg and y4m name them.
_SUBSAMPLING = {(1, 1): "420", (1, 0): "422", (0, 0): "444", (0, 1): "440", (2, 0): "411", (2, 2): "410"}
_BY_NAME = {name: ss for ss, name in _SUBSAMPLING.items()}
# What vspipe writes as y4m and ffmpeg's y4m demuxer reads back.
_PIPE_BITS = {"420": (8, 9, 10, 12, 14, 16), "422": (8, 9, 10, 12, 14, 16), "444": (8, 9, 10, 12, 14, 16),
              "411": (8,), "GRAY": (8, 9, 10, 12, 16)}


@dataclass(frozen=True)
class VideoFormat:
    """A planar pixel format, as VapourSynth describes it: family, bits, chroma subsampling."""

    family: str  # "YUV", "RGB" or "GRAY"
    bits: int
    ssw: int = 0  # log2 of the chroma subsampling, horizontal and vertical (YUV only)
    ssh: int = 0
    float: bool = False

    @property
    def subsampling(self) -> str:
        """'420', '422', '444', ... (YUV), else ''."""
        return _SUBSAMPLING.get((self.ssw, self.ssh), "?") if self.family == "YUV" else ""

    @property
    def pix_fmt(self) -> str:
        """ffmpeg's name of the planar format: yuv420p10le, gray, gbrp12le, ..."""
        base = {"YUV": f"yuv{self.subsampling}p", "GRAY": "gray", "RGB": "gbrp"}[self.family]
        if self.float:
            return {"YUV": f"yuv{self.subsampling}pf32le", "GRAY": "grayf32le", "RGB": "gbrpf32le"}[self.family]
        return base if self.bits == 8 else f"{base}{self.bits}le"

    @property
    def vs_name(self) -> str:
        """VapourSynth's constant, e.g. ``YUV420P10``, ``GRAY8``, ``RGB30``."""
        if self.family == "YUV":
            return f"YUV{self.subsampling}P{'S' if self.float else self.bits}"
        if self.family == "GRAY":
            return "GRAYS" if self.float else f"GRAY{self.bits}"
        return "RGBS" if self.float else f"RGB{3 * self.bits}"

    def describe(self) -> str:
        """'10-bit 4:4:4', '8-bit RGB', '16-bit gray', '32-bit float 4:2:0'."""
        depth = f"{self.bits}-bit{' float' if self.float else ''}"
        kind = {"RGB": "RGB", "GRAY": "gray"}.get(self.family) or ":".join(self.subsampling)
        return f"{depth} {kind}"

    @property
    def pipeable(self) -> bool:
        """Whether vspipe's y4m carries it to ffmpeg (RGB: as its planes in YUV 4:4:4)."""
        if self.float:
            return False
        key = "GRAY" if self.family == "GRAY" else "444" if self.family == "RGB" else self.subsampling
        return self.bits in _PIPE_BITS.get(key, ())

    @classmethod
    def from_pix_fmt(cls, name: str) -> Optional["VideoFormat"]:
        """The planar formats vs-uav encodes from ffmpeg's names (and ``bgr0``, packed 8-bit RGB);
        None for the others (alpha, packed, semi-planar, full-range 'yuvj' aliases)."""
        if name == "bgr0":
            return cls("RGB", 8)
        m = re.fullmatch(r"(yuv(\d{3})p|gray|gbrp)(\d+)?(le)?", name)
        if m is None or (m[3] is None) != (m[4] is None):
            return None
        bits = int(m[3] or 8)
        if m[1] == "gray":
            return cls("GRAY", bits)
        if m[1] == "gbrp":
            return cls("RGB", bits)
        ss = _BY_NAME.get(m[2])
        return cls("YUV", bits, *ss) if ss else None


@dataclass(frozen=True)
class HdrMetadata:
    """HDR10 static metadata, as ffprobe's side data says it: the mastering display's
    primaries and white point (CIE 1931 x, y) and luminance range (cd/m²), MaxCLL and MaxFALL."""

    primaries: Optional[tuple[Fraction, ...]] = None  # red x, y, green x, y, blue x, y, white x, y
    luminance: Optional[tuple[Fraction, Fraction]] = None  # min, max
    max_cll: int = 0
    max_fall: int = 0

    def x265_params(self) -> str:
        """x265's ``master-display=G(x,y)B(x,y)R(x,y)WP(x,y)L(max,min):max-cll=CLL,FALL`` (its units:
        0.00002 for chromaticity, 0.0001 cd/m² for luminance)."""
        params = []
        if self.primaries and self.luminance:
            c = [round(v * 50000) for v in self.primaries]
            lo, hi = (round(v * 10000) for v in self.luminance)
            params.append(f"master-display=G({c[2]},{c[3]})B({c[4]},{c[5]})R({c[0]},{c[1]})WP({c[6]},{c[7]})"
                          f"L({hi},{lo})")
        if self.max_cll or self.max_fall:
            params.append(f"max-cll={self.max_cll},{self.max_fall}")
        return ":".join(params)


@dataclass(frozen=True)
class MediaInfo:
    """The clip a script hands the filter, and its source file's field order and timing."""

    width: int
    height: int
    frames: int
    format: VideoFormat
    fps: Fraction  # the clip's rate (what y4m carries); 0 when VapourSynth says variable
    matrix: int = UNSPECIFIED  # H.273 codes: VapourSynth's _Matrix, _Primaries, _Transfer
    primaries: int = UNSPECIFIED
    transfer: int = UNSPECIFIED
    range: Optional[str] = None  # "tv" (limited) or "pc" (full); None: not said
    chroma_location: Optional[int] = None  # VapourSynth's _ChromaLocation (0 left, 1 center, 2 top left, ...)
    sar: Optional[Fraction] = None  # sample (pixel) aspect ratio
    field_based: int = 0  # the first frame's _FieldBased: 0 progressive, 1 bottom field first, 2 top field first
    field_order: str = "progressive"  # the container's (ffprobe): progressive, tt, bb, tb, bt or unknown
    time_base: Fraction = Fraction(0)  # of the source's video stream
    # Every frame's time in time_base ticks from the start of the file the audio is copied from
    # (ffmpeg counts an input's streams from there), when it is not simply N / fps: a variable
    # frame rate, or video that starts after the file does. None: N / fps.
    times: Optional[tuple[int, ...]] = None
    # The source's audio has packets before the time a player starts at (an edit list's or an
    # encoder's priming): ffmpeg's stream copy would keep them, and shift the video to make room.
    preroll: bool = False
    subtitles: tuple[str, ...] = ()  # the source's subtitle streams' codecs, e.g. ("subrip", "ass")
    audio: Optional[str] = None  # the first audio stream's codec, e.g. "aac"; None without audio
    audio_bytes: int = 0  # its size, from its bit rate and duration (0: unknown)
    tagged: bool = False  # the source's container has global metadata (title, ...)
    hdr: Optional["HdrMetadata"] = None  # its HDR10 static metadata
    coded_size: Optional[tuple[int, int]] = None  # the container's width and height (ffprobe)
    # The source file's format when the clip is a 4:4:4 copy of it (an odd size its chroma
    # subsampling does not divide, which BestSource would crop): the output is encoded as it.
    source_format: Optional[VideoFormat] = None
    note: str = ""  # one line: what the probe found that the output cannot keep ("" when nothing)
    timecode: str = ""  # the start timecode of the first frame (the source's tag, shifted for an excerpt)
    # An excerpt of the source (:func:`excerpt`): where its first frame is, in seconds from the
    # start of the file the audio is copied from, and how long it lasts. None: the whole file.
    excerpt: Optional[tuple[Fraction, Fraction]] = None
    whole_frames: int = 0  # an excerpt's: the frames of the clip it is taken from (its frame numbers' range)
    first_number: int = 0  # the number of the first frame (an image sequence's first file; an excerpt's first)
    declared_frames: int = 0  # the frames the container's header says its video holds (0: not said)

    @property
    def hdr_transfer(self) -> str:
        """'PQ' or 'HLG' for an HDR transfer, else ''."""
        return {16: "PQ", 18: "HLG"}.get(self.transfer, "")

    @property
    def odd_size(self) -> bool:
        """Whether BestSource cropped the source to a size its chroma subsampling divides."""
        return self.coded_size is not None and self.coded_size != (self.width, self.height) and \
            all(c - v in (0, 1, 2, 3) for c, v in zip(self.coded_size, (self.width, self.height)))

    @property
    def interlaced(self) -> bool:
        return self.field_based in (1, 2) or self.field_order in ("tt", "bb", "tb", "bt")

    def describe_fields(self) -> str:
        """'top field first', 'bottom field first' (or what the container says)."""
        if self.field_based in (1, 2):
            return "top field first" if self.field_based == 2 else "bottom field first"
        return {"tt": "top field first", "tb": "top field first, coded bottom first",
                "bb": "bottom field first", "bt": "bottom field first, coded top first"}.get(self.field_order,
                                                                                          self.field_order)


def interlaced_message(source: Path, info: MediaInfo, option: bool = True) -> str:
    """The one-line refusal of an interlaced source, with the ways to deinterlace it
    (``option``: mention ``--deinterlace bwdif``)."""
    progressive = Path(source).with_name(f"{Path(source).stem}.progressive.mkv")
    first = (f"ffmpeg -i {_quote(source)} -vf bwdif=mode=send_field -c:v ffv1 -c:a copy {_quote(progressive)}")
    how = (f"with --deinterlace bwdif (ffmpeg's bwdif, one frame per field), or first, e.g. {first}" if option
           else f"first, e.g. {first}, and use that file")
    return f"input {source} is interlaced ({info.describe_fields()}); accepted: progressive video \u2014 deinterlace it {how}"


DEINTERLACERS = ("none", "bwdif")


def deinterlace(source: Path, target: Path, ffmpeg: str = "ffmpeg") -> None:
    """``source``'s video deinterlaced by ffmpeg's bwdif, one frame per field (twice the frame
    rate), into ``target`` (see :func:`convert`)."""
    convert(source, target, BWDIF, "ffmpeg's bwdif could not deinterlace it", ffmpeg)


BWDIF = "bwdif=mode=send_field"


def full_chroma_filter(info: MediaInfo) -> str:
    """ffmpeg's filter making an odd-sized subsampled source 4:4:4 at its own size (ffmpeg keeps
    its last column and row, which BestSource and ffmpeg's pad filter would drop; luma unchanged)."""
    return f"format={VideoFormat('YUV', info.format.bits).pix_fmt}"


def convert(source: Path, target: Path, filters: str, failed: str = "ffmpeg could not convert it",
            ffmpeg: str = "ffmpeg") -> None:
    """``source``'s video through ffmpeg's ``filters`` into ``target``, a lossless FFV1 .mkv
    with the source's timestamps, colour tags and sample aspect ratio. Raises ValueError with
    ``failed`` and ffmpeg's error in one line."""
    exe = shutil.which(ffmpeg)
    if not exe:
        raise ValueError("ffmpeg not found; install it or run `uav doctor`")
    run = subprocess.run([exe, "-hide_banner", "-nostdin", "-v", "error", "-y", "-copyts", "-i",
                          "file:" + os.path.abspath(source), "-map", "0:v:0", "-vf", filters,
                          "-fps_mode", "passthrough", "-c:v", "ffv1", "-level", "3", "file:" + os.path.abspath(target)],
                         capture_output=True, text=True, **child_options())
    if run.returncode:
        Path(target).unlink(missing_ok=True)
        said = one_line(run.stderr)[-300:] or f"exit status {run.returncode}"
        raise ValueError(f"input {source}: {failed} ({said})")


def not_a_video(source: Path) -> str:
    """Why ``source`` cannot be an input, in one line ("" when it is a file): missing, or a folder."""
    source = Path(source)
    if source.is_dir():
        return (f"input {source} is a folder without videos or images; accepted: a video file "
                f"{image_sequence_hint(source)}")
    return "" if source.is_file() else f"input {source} not found"


def image_sequence_hint(folder: Path) -> str:
    """What to do with a folder of frames, in parentheses."""
    return (f"(or a folder of numbered images, or their pattern, e.g. {_quote(Path(folder) / '%07d.dpx')}, with "
            "--fps)")


def _quote(path: Path) -> str:
    return shlex.quote(str(path))


# -- probing ---------------------------------------------------------------------------------------

def probe(source: Path, reading: str, start_of: Optional[Path] = None) -> MediaInfo:
    """What the script whose first lines are ``reading`` (Python defining ``clip``, e.g.
    :func:`vs_uav.media.script.reading_script`) hands the filter, and ``source``'s field order,
    timestamps, subtitles, global tags and HDR metadata. ``start_of``: the file the audio is
    copied from, when it is not ``source`` (its start is time 0). Raises ValueError with one
    line (no VapourSynth, no video stream, an unreadable file, a script error)."""
    source = Path(source)
    header = _ffprobe(["-show_streams", "-show_format"], source)
    if header and not any(s.get("codec_type") == "video" for s in header.get("streams", [])):
        check_video_file(source)  # its one line, before BestSource's 'track index'
    try:
        import vapoursynth as vs
    except ImportError as e:
        raise ValueError(f"VapourSynth is not installed ({e})") from None
    namespace: dict = {"__name__": "__vapoursynth__"}
    try:
        exec(compile(reading, f"<reading {source}>", "exec"), namespace)
        clip = namespace["clip"]
        fmt = clip.format
        if fmt is None or fmt.id == vs.NONE or not clip.width or not clip.num_frames:
            raise vs.Error("the clip has a variable format or size, or no frames")
        props = dict(clip.get_frame(0).props)
    except vs.Error as e:
        raise ValueError(f"input {source}: not a video VapourSynth can read ({one_line(e)})") from None
    family = {vs.YUV: "YUV", vs.RGB: "RGB", vs.GRAY: "GRAY"}.get(fmt.color_family)
    if family is None:
        raise ValueError(f"input {source}: format {fmt.name} is not supported; accepted: YUV, RGB or GRAY")
    video_format = VideoFormat(family, fmt.bits_per_sample, fmt.subsampling_w, fmt.subsampling_h,
                               fmt.sample_type == vs.FLOAT)
    rng = props.get("_Range")
    sar = Fraction(props["_SARNum"], props["_SARDen"]) if props.get("_SARNum", 0) > 0 and \
        props.get("_SARDen", 0) > 0 else None
    if sar is not None and _turned(header):  # BestSource turns the picture upright; its pixels turn with it
        sar = 1 / sar
    fps = Fraction(clip.fps.numerator, clip.fps.denominator) if clip.fps.denominator else Fraction(0)
    # An image sequence has no timing of its own: the reader's default rate (25) is no timestamp
    # of it; the script's rate (--fps) is its timing.
    container = {"field_order": "progressive"} if _is_pattern(source) else _probe_container(source, start_of)
    times, note = _timing(container, clip.num_frames, fps)
    chroma = props.get("_ChromaLocation") if family == "YUV" and (fmt.subsampling_w or fmt.subsampling_h) else None
    transfer = int(props.get("_Transfer", UNSPECIFIED))
    info = MediaInfo(
        width=clip.width, height=clip.height, frames=clip.num_frames, format=video_format, fps=fps,
        matrix=int(props.get("_Matrix", UNSPECIFIED)), primaries=int(props.get("_Primaries", UNSPECIFIED)),
        transfer=transfer, range=None if rng is None else ("pc" if int(rng) == 1 else "tv"),
        chroma_location=None if chroma is None else int(chroma), sar=sar,
        field_based=int(props.get("_FieldBased", 0)), field_order=container.get("field_order", "unknown"),
        time_base=container.get("time_base", Fraction(0)), times=times, note=note,
        coded_size=_size_of(header.get("streams", [])),
        # What the output takes from the source file itself (a deinterlaced copy has none of it).
        **_streams_of(header if start_of is None else _ffprobe(["-show_streams", "-show_format"], start_of),
                      start_of or source, hdr=transfer in (16, 18)))
    info = _checked(info, source, header)
    logger.debug("probe %s: %s", source, info)
    return info


MAX_FPS = 1000  # above it a rate is a broken header (e.g. an MP4's 1/1000000 time base taken as its rate)


def _checked(info: MediaInfo, source: Path, header: dict) -> MediaInfo:
    """``info`` with what a file's own tags say checked: a rate above :data:`MAX_FPS` refused
    (ValueError, one line), a timecode tag that is no timecode at the clip's rate dropped with a
    note, the header's frame count kept (:func:`truncation_note` compares it)."""
    from vs_uav.media.timecode import valid_tag
    from vs_uav.untrusted import escaped

    if info.fps > MAX_FPS:
        raise ValueError(f"input {source}: {float(info.fps):g} fps; accepted: up to {MAX_FPS} fps (its timing is "
                         "broken: remux it at its real rate, e.g. ffmpeg -r 25 -i IN -c copy OUT.mkv)")
    notes = [info.note] if info.note else []
    timecode = info.timecode
    if timecode and not valid_tag(timecode, info.fps):
        shown = escaped(timecode[:40]) + ("..." if len(timecode) > 40 else "")
        notes.append(f"the source's timecode tag '{shown}' is no HH:MM:SS:FF timecode at {float(info.fps):g} fps: "
                     "not carried into the output")
        timecode = ""
    video = next((s for s in header.get("streams", []) if s.get("codec_type") == "video"), {})
    declared = str(video.get("nb_frames", ""))
    return replace(info, timecode=timecode, note="; ".join(notes),
                   declared_frames=int(declared) if declared.isascii() and declared.isdigit() else 0)


def truncation_note(media: MediaInfo, source: Path) -> str:
    """One line when the source decodes to fewer frames than its header says (a file cut off
    in a copy or a download), else ""."""
    if media.declared_frames > media.frames:
        return (f"{source} decodes to {media.frames} frames but its header says {media.declared_frames}: it is "
                f"probably cut off or damaged; only the {media.frames} readable frames are upscaled")
    return ""


def _turned(header: dict) -> bool:
    """Whether the video's display matrix turns it a quarter (a phone held upright): its
    rotation side data at +-90 or 270 degrees."""
    video = next((s for s in header.get("streams", []) if s.get("codec_type") == "video"), {})
    for data in video.get("side_data_list", []) or []:
        try:
            if round(float(data.get("rotation", 0))) % 180 == 90:
                return True
        except (TypeError, ValueError):
            continue
    return False


def _is_pattern(path: Path) -> bool:
    from vs_uav.media.sequence import is_pattern

    return is_pattern(path)


def _size_of(streams: Sequence[dict]) -> Optional[tuple[int, int]]:
    video = next((s for s in streams if s.get("codec_type") == "video"), {})
    return (int(video["width"]), int(video["height"])) if video.get("width") and video.get("height") else None


def _streams_of(header: dict, source: Path, hdr: bool) -> dict:
    """MediaInfo's fields from ffprobe's streams and format of ``source``: its subtitles, global
    tags, HDR10 metadata (``hdr``), and whether its audio has packets before the start."""
    streams = header.get("streams", [])
    tags = {k.lower() for k in header.get("format", {}).get("tags", {})}
    out: dict = {"subtitles": tuple(s.get("codec_name", "unknown") for s in streams
                                    if s.get("codec_type") == "subtitle"),
                 "tagged": bool(tags - {"encoder", "major_brand", "minor_version", "compatible_brands"}),
                 "preroll": _audio_preroll(source), "timecode": _timecode_of(header), **_audio_of(header)}
    if hdr:
        video = next((s for s in streams if s.get("codec_type") == "video"), {})
        out["hdr"] = _hdr_metadata(source, video)
    return out


def _timecode_of(header: dict) -> str:
    """The start timecode a container says: a stream's ``timecode`` tag (QuickTime's tmcd track,
    MXF) or the file's (Matroska's ``TIMECODE``); "" when none."""
    tagged = [s.get("tags", {}) for s in header.get("streams", [])] + [header.get("format", {}).get("tags", {})]
    for tags in tagged:
        for key, value in tags.items():
            if key.lower() == "timecode" and isinstance(value, str) and value.strip():
                return value.strip()
    return ""


def excerpt(media: MediaInfo, first: int, end: int) -> MediaInfo:
    """What a script trimming ``media``'s clip to frames ``first .. end - 1`` hands the filter:
    its frames, its times from 0, its start timecode, and where its audio lies in the source
    (``excerpt``). ValueError (one line) for a range that is not inside the clip."""
    if not 0 <= first < end <= media.frames:
        raise ValueError(f"--frames {first}-{end - 1}: the source has frames 0-{media.frames - 1}; accepted: "
                         "FIRST-LAST within them, FIRST <= LAST")
    if media.times is not None:
        times, tb = media.times, media.time_base
        step = times[-1] - times[-2] if len(times) > 1 else 0
        stop = times[end] if end < len(times) else times[-1] + step
        start, duration = times[first] * tb, (stop - times[first]) * tb
        kept = tuple(t - times[first] for t in times[first:end])
    else:
        if not media.fps:
            raise ValueError(f"--frames {first}-{end - 1}: the source's frame rate is unknown")
        start, duration, kept = first / media.fps, (end - first) / media.fps, None
    timecode = ""
    if media.fps:  # the timecode of its first frame (a file without one counts from 00:00:00:00, as editors do)
        from vs_uav.media.timecode import shift_timecode

        try:
            timecode = shift_timecode(media.timecode or "00:00:00:00", first, media.fps)
        except ValueError:
            timecode = ""  # a tag that is no timecode is not carried
    return replace(media, frames=end - first, times=kept, timecode=timecode, excerpt=(start, duration),
                   preroll=False, whole_frames=media.frames, first_number=media.first_number + first)


def _audio_of(header: dict) -> dict:
    """MediaInfo's ``audio`` and ``audio_bytes`` from ffprobe's streams and format."""
    audio = next((s for s in header.get("streams", []) if s.get("codec_type") == "audio"), None)
    if audio is None:
        return {}
    seconds = _number(audio.get("duration")) or _number(header.get("format", {}).get("duration"))
    return {"audio": audio.get("codec_name", "unknown"), "audio_bytes": int(_number(audio.get("bit_rate")) * seconds / 8)}


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _audio_preroll(source: Path) -> bool:
    """Whether the first audio packet is one a player drops (ffprobe's 'D' flag)."""
    data = _ffprobe(["-select_streams", "a:0", "-read_intervals", "%+#1", "-show_entries", "packet=flags"], source)
    return any("D" in p.get("flags", "") for p in data.get("packets", [])[:1])


def _hdr_metadata(source: Path, video: dict) -> Optional[HdrMetadata]:
    """The mastering display and content light level of the stream (the container's) or of
    its first frame (the bitstream's SEI)."""
    data = _ffprobe(["-select_streams", "v:0", "-read_intervals", "%+#1", "-show_frames"], source)
    lists = [video.get("side_data_list", []), *(f.get("side_data_list", []) for f in data.get("frames", [])[:1])]
    primaries = luminance = None
    cll = fall = 0
    for item in (d for side in lists for d in side):
        kind = item.get("side_data_type", "")
        try:
            if kind.startswith("Mastering display") and "red_x" in item:
                primaries = tuple(Fraction(item[f"{c}_{xy}"]) for c in ("red", "green", "blue", "white_point")
                                  for xy in "xy")
                luminance = (Fraction(item["min_luminance"]), Fraction(item["max_luminance"]))
            elif kind.startswith("Content light level"):
                cll, fall = int(item.get("max_content", 0)), int(item.get("max_average", 0))
        except (KeyError, ValueError, ZeroDivisionError):
            continue
    if primaries is None and not (cll or fall):
        return None
    return HdrMetadata(primaries, luminance, cll, fall)


def _ffprobe(args: Sequence[str], path: Path) -> dict:
    return ffprobe_json(args, path)[0]


def ffprobe_json(args: Sequence[str], path: Path) -> tuple[dict, str]:
    """ffprobe ``args`` on ``path``, the one way vs-uav runs ffprobe: (its JSON, {} when it failed
    or is missing; its last error line, "" when none)."""
    ffprobe = shutil.which("ffprobe")
    if not ffprobe:
        return {}, ""
    target = "file:" + os.path.abspath(path)
    try:
        run = subprocess.run([ffprobe, "-v", "error", *args, "-of", "json", "-i", target],
                             capture_output=True, text=True, timeout=600)
        lines = [line.strip() for line in run.stderr.splitlines() if line.strip()]
        said = lines[-1].removeprefix(target + ": ") if lines else ""
        return (json.loads(run.stdout or "{}") if run.returncode == 0 else {}), said
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return {}, ""


def check_video_file(source: Path) -> None:
    """The cheap look before anything reads ``source`` (BestSource indexes the whole file
    first): a file, which ffprobe's header says holds a video stream. ValueError, one line;
    without ffprobe only the first is checked."""
    said = not_a_video(source)
    if said:
        raise ValueError(said)
    header, why = ffprobe_json(["-show_streams"], source)
    if shutil.which("ffprobe") and not header:
        raise ValueError(f"input {source}: not a readable video ({why or 'ffprobe read nothing'})")
    if header and not any(s.get("codec_type") == "video" for s in header.get("streams", [])):
        raise ValueError(f"input {source}: has no video stream; accepted: a video file")


def _probe_container(source: Path, start_of: Optional[Path]) -> dict:
    """The first video stream's field order, time base and packet timestamps (sorted, i.e.
    in display order), and the start of the file the audio comes from; {} without ffprobe."""
    data = _ffprobe(["-select_streams", "v:0", "-show_entries",
                     "stream=field_order,time_base:packet=pts,flags:format=start_time"], source)
    streams = data.get("streams") or [{}]
    out: dict = {"field_order": streams[0].get("field_order", "unknown")}
    try:
        out["time_base"] = Fraction(streams[0]["time_base"])
    except (KeyError, ValueError, ZeroDivisionError):
        return out
    # 'D': a packet an edit list drops (decoded for the next frames, never presented; BestSource skips it too).
    pts = [p.get("pts") for p in data.get("packets", []) if "D" not in p.get("flags", "")]
    if pts and all(isinstance(p, int) for p in pts):
        out["pts"] = sorted(pts)
    start = (data if start_of is None else _ffprobe(["-show_entries", "format=start_time"], start_of))
    try:
        out["start"] = Fraction(start.get("format", {}).get("start_time", "0"))
    except ValueError:
        out["start"] = Fraction(0)
    return out


def _timing(container: dict, frames: int, fps: Fraction) -> tuple[Optional[tuple[int, ...]], str]:
    """Every presented frame's time in ticks from the file's start, or None when frame N is at
    N / fps; and one line when the script's frame count loses a variable rate's times."""
    pts, tb = container.get("pts"), container.get("time_base")
    if not pts or not tb:
        return None, ""
    start = round(container.get("start", Fraction(0)) / tb)  # in ticks
    first = pts[0]
    constant = bool(fps) and all(abs((p - first) * tb - i / fps) <= tb for i, p in enumerate(pts))
    if len(pts) == frames and not (constant and first == start):
        return tuple(p - start for p in pts), ""
    if not constant:
        return None, (f"the source's frame rate varies, but the script changes its frame count ({frames} frames "
                      f"of {len(pts)}): the output gets the constant rate {fps}")
    if first == start:
        return None, ""
    # A constant rate starting after the file's start, some frames of it (e.g. a trimmed excerpt).
    return tuple(first - start + round(i / fps / tb) for i in range(frames)), ""


def count_frames(path: Path) -> int:
    """The video frames of ``path`` (packets of its first video stream: one per frame for every
    codec vs-uav writes), or -1 when ffprobe cannot read it. How a finished output (and a
    cluster's segment) is verified before it gets its name."""
    from vs_uav.media.sequence import find_sequence, is_pattern

    if is_pattern(path):  # an image sequence: its files
        try:
            return find_sequence(path).frames
        except ValueError:
            return -1
    if not Path(path).is_file():
        return -1
    data, said = ffprobe_json(["-select_streams", "v:0", "-count_packets", "-show_entries", "stream=nb_read_packets"],
                              path)
    try:
        return int(data["streams"][0]["nb_read_packets"])
    except (KeyError, IndexError, TypeError, ValueError):
        logger.debug("probe: ffprobe could not count the frames of %s (%s)", path, said)
        return -1
