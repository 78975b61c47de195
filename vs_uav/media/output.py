"""What the output keeps of the source (colour tags, timing, SAR, audio, subtitles, HDR10) and the ffmpeg options that write it.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from vs_uav.media.encoder import IMAGE_CODECS, EncoderSettings
from vs_uav.media.probe import MediaInfo, VideoFormat
from vs_uav.media.sequence import is_pattern

logger = logging.getLogger(__name__)


# H.273 codes (VapourSynth's props, ffmpeg's values) by ffmpeg's option names.
_PRIMARIES = {1: "bt709", 4: "bt470m", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 8: "film", 9: "bt2020",
              10: "smpte428", 11: "smpte431", 12: "smpte432", 22: "jedec-p22"}


_TRANSFER = {1: "bt709", 4: "gamma22", 5: "gamma28", 6: "smpte170m", 7: "smpte240m", 8: "linear", 9: "log100",
             10: "log316", 11: "iec61966-2-4", 12: "bt1361e", 13: "iec61966-2-1", 14: "bt2020-10", 15: "bt2020-12",
             16: "smpte2084", 17: "smpte428", 18: "arib-std-b67"}


_MATRIX = {0: "rgb", 1: "bt709", 4: "fcc", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 8: "ycgco", 9: "bt2020nc",
           10: "bt2020c", 11: "smpte2085", 12: "chroma-derived-nc", 13: "chroma-derived-c", 14: "ictcp"}


_CHROMA = {0: "left", 1: "center", 2: "topleft", 3: "top", 4: "bottomleft", 5: "bottom"}  # _ChromaLocation


# The few names the setparams filter spells differently.
_FILTER_NAMES = {("colorspace", "rgb"): "gbr", ("color_trc", "gamma22"): "bt470m",
                 ("color_trc", "gamma28"): "bt470bg"}


# Codecs whose bitstream holds no full-range flag (ProRes is limited range).
_LIMITED_ONLY = ("prores",)


# A video filter graph longer than this goes to a file (-filter_script): a command-line
# argument is limited to 128 KiB on Linux.
_INLINE_FILTER = 32_000


@dataclass(frozen=True)
class OutputSpec:
    """The encoded stream: its format and its tags, from the source (:class:`MediaInfo`) and the codec."""

    media: MediaInfo
    format: VideoFormat  # what the codec encodes (the pipe carries the same, RGB as its planes in YUV 4:4:4)
    pix_fmt: str  # ffmpeg's name of it
    matrix: int
    primaries: int
    transfer: int
    range: Optional[str]  # "tv", "pc" or None (not said)
    chroma_location: Optional[int]
    note: str = ""  # one line: what could not be kept, and why ("" when everything was)
    container: str = ""  # the output's extension, e.g. ".mkv" (what its subtitles can be)
    subtitles: tuple[tuple[int, str], ...] = ()  # (the source's subtitle stream, the codec it is written with)

    @property
    def converts(self) -> bool:
        # An untagged source is tagged as what it was taken to be: no conversion for that.
        return self.format.vs_name != self.media.format.vs_name or \
            (self.media.range is not None and self.range != self.media.range)

    def tags(self) -> dict[str, str]:
        """ffmpeg's output options for the tags that are known, e.g. {'colorspace': 'bt709', ...}."""
        tags = {"colorspace": _MATRIX.get(self.matrix), "color_primaries": _PRIMARIES.get(self.primaries),
                "color_trc": _TRANSFER.get(self.transfer), "color_range": self.range,
                "chroma_sample_location": _CHROMA.get(self.chroma_location)}  # type: ignore[arg-type]
        return {k: v for k, v in tags.items() if v}


# ffmpeg refuses a picture of (width + 128) x (height + 128) >= INT_MAX / 8 pixels (av_image_check_size),
# and libx264 a side over 16384.
_MAX_PIXELS = (2**31 - 1) // 8
_MAX_SIDE = {"x264": 16384}


def check_output_size(media: MediaInfo, encoder: EncoderSettings, scale: int = 4) -> None:
    """ValueError in one line when the upscaled frame is larger than ffmpeg or the codec takes
    (checked before anything runs: a 16000x16000 source fails otherwise after the model ran)."""
    width, height = media.width * scale, media.height * scale
    side = _MAX_SIDE.get(encoder.codec)
    if (width + 128) * (height + 128) >= _MAX_PIXELS or (side and max(width, height) > side):
        limit = f"sides up to {side} for {encoder.codec}" if side and max(width, height) > side else \
            f"up to {_MAX_PIXELS // 1_000_000} million pixels a frame (ffmpeg)"
        raise ValueError(f"input {media.width}x{media.height}: the output would be {width}x{height}; accepted: "
                         f"{limit}; crop or downscale the source first")


def output_spec(media: MediaInfo, encoder: EncoderSettings, ffmpeg: str = "ffmpeg", container: str = "") -> OutputSpec:
    """How ``encoder`` encodes the upscaled ``media`` (the filter returns the source's format and
    props) into a ``container`` file (an extension; the codec's usual one by default): the format
    :meth:`EncoderSettings.encoding_format` chooses, the tags that are true of the converted
    frames, the subtitles the container holds, and one line saying what cannot be kept."""
    src = media.format
    fmt, pix_fmt, note = encoder.encoding_format(media.source_format or src, ffmpeg)
    matrix, rng, chroma = media.matrix, media.range, media.chroma_location
    subsampled = fmt.family == "YUV" and (fmt.ssw or fmt.ssh)
    if fmt.family == "RGB":
        matrix, chroma = 0, None
    elif src.family == "RGB":  # converted with BT.709, to limited range as YUV is delivered
        matrix, rng, chroma = 1, "tv", None
    elif src.family == "GRAY":  # neutral chroma: no matrix or siting to speak of
        chroma = None
    elif not subsampled:
        chroma = None
    elif (fmt.ssw, fmt.ssh) != (src.ssw, src.ssh) and chroma is None:
        chroma = 0  # zimg's siting when it subsamples
    notes = [note] if note else []
    if encoder.codec in _LIMITED_ONLY and rng == "pc":
        rng = "tv"
        said = f"full-range source converted to limited range ({encoder.codec} holds no full range)"
        notes.append(said if notes else f"{encoder.codec}: {said}")
    if fmt.family == "YUV" and rng is None:
        rng = "tv"  # what every conversion (zimg's, the model's) took an untagged YUV source to be
    container = (container or encoder.container).lower()
    subtitles, said = _subtitle_plan(media.subtitles, container)
    cropped = ""
    if media.odd_size:  # (uav upscale pads it instead: prepare_source)
        (w, h), fmt_name = media.coded_size, src.describe()
        cropped = (f"BestSource reads the {w}x{h} {fmt_name} source as {media.width}x{media.height} (cropped to a "
                   f"size its chroma subsampling divides); uav upscale keeps {w}x{h}")
    notes += [n for n in (media.note, cropped, said, _hdr_note(media, encoder), _siting_note(encoder, fmt, chroma,
                                                                                        container)) if n]
    return OutputSpec(media, fmt, pix_fmt, matrix, media.primaries, media.transfer, rng, chroma, "; ".join(notes),
                      container, subtitles)


# Subtitle codecs by what they are: text (any container with subtitles takes it as its text
# format) or pictures (kept where the container holds that codec).
_TEXT_SUBTITLES = ("subrip", "srt", "ass", "ssa", "webvtt", "mov_text", "text")


_MATROSKA = (".mkv", ".mka", ".mks")


def _subtitle_plan(codecs: Sequence[str], container: str) -> tuple[tuple[tuple[int, str], ...], str]:
    """Which of the source's subtitle streams ``container`` keeps, each with the codec ffmpeg
    writes it with ('copy': unchanged), and one line on what it cannot keep as it is."""
    kept, changed, dropped = [], [], []
    for i, codec in enumerate(codecs):
        if container in _MATROSKA and codec != "mov_text":
            kept.append((i, "copy"))
        elif container in _MATROSKA:
            kept.append((i, "srt"))
        elif container in _MP4 and codec == "mov_text":
            kept.append((i, "copy"))
        elif container in _MP4 and codec in _TEXT_SUBTITLES:
            kept.append((i, "mov_text"))
            changed.append(codec)
        else:
            dropped.append(codec)
    said = []
    if changed:
        said.append(f"{container} holds text subtitles as mov_text only: the source's {', '.join(changed)} "
                    "subtitles become mov_text (their styling is lost; an .mkv output keeps them as they are)")
    if dropped:
        said.append(f"{container} cannot hold the source's {', '.join(dropped)} subtitles: dropped (an .mkv "
                    "output keeps them)")
    return tuple(kept), "; ".join(said)


def _siting_note(encoder: EncoderSettings, fmt: VideoFormat, chroma: Optional[int], container: str) -> str:
    """The line saying that the output cannot signal the source's chroma siting, where it cannot
    (measured: HEVC signals it for 4:2:0 only; a .mov holds none for ProRes, an .mkv does)."""
    if chroma is None:
        return ""
    where = _CHROMA.get(chroma, str(chroma))
    if encoder.codec == "x265" and (fmt.ssw, fmt.ssh) != (1, 1):
        kind = ":".join(fmt.subsampling)  # 4:2:2, 4:4:4
        return (f"x265 signals chroma siting for 4:2:0 only: the {kind} output's chroma location reads unspecified "
                f"(the frames are sited {where}; decoders assume left)")
    if encoder.codec == "prores" and container in (".mov", ".mp4"):
        return (f"{container} holds no chroma siting for ProRes: the output's chroma location reads unspecified "
                f"(the frames are sited {where}; an .mkv output keeps it)")
    return ""


def _hdr_note(media: MediaInfo, encoder: EncoderSettings) -> str:
    """The line saying what becomes of an HDR (PQ or HLG) source."""
    kind = media.hdr_transfer
    if not kind:
        return ""
    said = (f"the source is HDR ({kind}) but the model was trained on SDR video: it is upscaled as it is (its code "
            f"values read as SDR) and tagged {kind} again")
    if media.hdr is not None:
        said += (", with its mastering display and MaxCLL/MaxFALL" if encoder.codec == "x265" else
                 f"; {encoder.codec} cannot carry its mastering display and MaxCLL/MaxFALL metadata (x265 does)")
    return said


def _timestamps_expr(times: Sequence[int]) -> str:
    """A setpts expression giving frame N the time ``times[N]`` (ticks): runs of evenly spaced
    frames as one rounded line each (within 0.45 ticks, so rounding hits every time exactly),
    found by a balanced tree of comparisons."""
    runs: list[tuple[int, int, float]] = []  # (first frame, its time, ticks per frame)
    i = 0
    while i < len(times):
        lo, hi, j = -float("inf"), float("inf"), i + 1
        while j < len(times):
            d = j - i
            a, b = max(lo, (times[j] - times[i] - 0.45) / d), min(hi, (times[j] - times[i] + 0.45) / d)
            if a > b:
                break
            lo, hi, j = a, b, j + 1
        runs.append((i, times[i], _shortest(lo, hi) if j > i + 1 else 0.0))
        i = j

    def tree(a: int, b: int) -> str:
        if b - a == 1:
            n0, t0, step = runs[a]
            line = f"round({'N' if n0 == 0 else f'(N-{n0})'}*{step!r})" if step else ""
            return f"{t0}+{line}" if t0 and line else line or str(t0)
        mid = (a + b) // 2
        return f"if(lt(N,{runs[mid][0]}),{tree(a, mid)},{tree(mid, b)})"

    return tree(0, len(runs))


def _shortest(lo: float, hi: float) -> float:
    """The number in [lo, hi] written with the fewest decimals."""
    for digits in range(16):
        value = round((lo + hi) / 2, digits)
        if lo <= value <= hi:
            return value
    return (lo + hi) / 2


def video_filter(spec: OutputSpec) -> str:
    """The ffmpeg filter graph of the output's video: RGB rebuilt from its planes, the source's
    timestamps (variable frame rate), the colour tags on the frames, the sample aspect ratio."""
    media, filters = spec.media, []
    if spec.format.family == "RGB":  # (format= changes nothing on the script's frames; it states what comes)
        bits = spec.format.bits
        filters.append(f"format={VideoFormat('YUV', bits).pix_fmt},mergeplanes=0x000102:"
                       f"{VideoFormat('RGB', bits).pix_fmt}")
    if media.times is not None:
        filters.append(f"settb={media.time_base.numerator}/{media.time_base.denominator},"
                       f"setpts='{_timestamps_expr(media.times)}'")
    params = [f"{'range' if k == 'color_range' else k}={_FILTER_NAMES.get((k, v), v)}"
              for k, v in spec.tags().items() if k != "chroma_sample_location"]
    if params:
        filters.append("setparams=" + ":".join(params))
    if media.sar:
        n, d = media.sar.numerator, media.sar.denominator
        filters.append(f"setsar={n}/{d}" + (f":max={max(n, d)}" if max(n, d) > 100 else ""))
    return ",".join(filters)


def needs_filter_file(spec: Optional[OutputSpec]) -> bool:
    """Whether :func:`video_filter` is too long for a command line (see ``filter_file``)."""
    return spec is not None and len(video_filter(spec)) > _INLINE_FILTER


def _video_options(spec: OutputSpec, filter_file: Optional[Path]) -> list[str]:
    graph = video_filter(spec)
    if filter_file is not None:
        args = ["-filter_script:v", path_arg(absolute(filter_file), True)]
    else:
        if len(graph) > _INLINE_FILTER:
            raise ValueError(f"the video filter is {len(graph)} characters long: write it to a file "
                             "(needs_filter_file, filter_file)")
        args = ["-vf", graph] if graph else []
    for name, value in spec.tags().items():
        args += [f"-{name}", value]
    if spec.media.times is not None:  # every timestamp kept, at the source's resolution: the audio stays in sync
        tb = spec.media.time_base
        args += ["-fps_mode:v", "passthrough", "-enc_time_base:v", f"{tb.numerator}/{tb.denominator}"]
    return args


def path_arg(path: Path, ffmpeg: bool = False) -> str:
    """A path as a program argument: never mistaken for an option or an ffmpeg protocol."""
    s = str(path)
    if s.startswith("-"):
        s = "./" + s
    if ffmpeg and ":" in s.split("/")[0]:  # 'a:b.mkv' would be read as protocol 'a'
        s = "file:" + s
    return s


def source_streams(source: Optional[Path], encoder: EncoderSettings,
                   spec: Optional[OutputSpec] = None) -> tuple[list[str], list[str]]:
    """What the output takes from the source besides the video, as ffmpeg's second input (input
    1; input 0 is the video): the input options, and the output options after ``-map 0:v:0``:
    the audio when asked for, the subtitles and global tags of ``spec``, the cut of the audio
    a player drops, the start timecode; for an excerpt of the source (``spec.media.excerpt``) its
    part of the audio and subtitles. The one-machine pipe and the cluster's join both use it."""
    media = spec.media if spec is not None else None
    if source is not None and is_pattern(source):
        source = None  # an image sequence: no audio, subtitles or tags to take
    copy_audio = encoder.audio == "copy" and source is not None
    timecode = ["-timecode", media.timecode] if media is not None and media.timecode else []
    if source is None or not (copy_audio or (media is not None and (media.tagged or spec.subtitles))):
        return [], timecode
    inputs, maps = ["-i", path_arg(absolute(source), True)], []
    if media is not None and media.excerpt is not None:
        # An excerpt (--frames, a conform's piece): its audio and subtitles, from where its first frame is.
        start, duration = media.excerpt
        inputs = ["-ss", _seconds(start), "-t", _seconds(duration), *inputs]
    if copy_audio:
        maps += ["-map", "1:a?", "-c:a", _excerpt_audio(spec) if media is not None and media.excerpt else "copy"]
    if media is None:
        return inputs, maps
    for n, (i, codec) in enumerate(spec.subtitles):
        maps += ["-map", f"1:s:{i}", f"-c:s:{n}", codec]
    if media.tagged:
        maps += ["-map_metadata", "1"]
    if copy_audio and media.preroll:
        # The output starts where a player starts the source: the audio packets before it go.
        maps += ["-ss", "0"]
    return inputs, maps + timecode


def _excerpt_audio(spec: OutputSpec) -> str:
    """The codec of an excerpt's audio. A stream copy can only cut where the container's index
    lets it seek (in a Matroska output the audio then starts up to a GOP early and shifts the
    video), so an excerpt's audio is decoded, cut to the sample and stored losslessly: FLAC, in
    a QuickTime file 24-bit PCM, in an MP4 ALAC."""
    return {".mov": "pcm_s24le", ".mp4": "alac", ".m4v": "alac"}.get(spec.container, "flac")


def _seconds(value) -> str:
    """Seconds as ffmpeg reads them, to the microsecond (its time base)."""
    return f"{float(value):.6f}"


def ffmpeg_options(source: Optional[Path], encoder: EncoderSettings, spec: Optional[OutputSpec] = None,
                   filter_file: Optional[Path] = None) -> list[str]:
    """ffmpeg's inputs and encoding options, without the program and the output: y4m on stdin,
    what the output takes from the source (:func:`source_streams`, when a source is given), the
    video codec.

    ``spec`` (:func:`output_spec`): the source's pixel format, colour tags, sample aspect ratio,
    timing, subtitles, global tags and HDR10 metadata kept; without it, the codec's default
    format and no tags. ``filter_file``: where the video filter graph was written when
    :func:`needs_filter_file` says it must be.
    """
    sequence = encoder.codec in IMAGE_CODECS  # one image file a frame: nothing but the video
    inputs, maps = source_streams(source, encoder, spec) if not sequence else ([], [])
    args = ["-i", "-", *inputs, "-map", "0:v:0", *maps]
    if sequence:  # numbered as the source's frames
        args += ["-f", "image2", "-start_number", str(spec.media.first_number if spec is not None else 0)]
    if spec is None:
        return [*args, *encoder.ffmpeg_video_args()]
    media = spec.media
    args += [*_video_options(spec, filter_file), *encoder.ffmpeg_video_args(spec.pix_fmt)]
    if encoder.codec == "x264" and media.range is None and spec.range == "tv":
        # libx264 writes no range without other colour tags: said in the bitstream, as x265 does.
        args += ["-bsf:v", "h264_metadata=video_full_range_flag=0"]
    if encoder.codec == "x265" and media.hdr is not None and media.hdr_transfer and media.hdr.x265_params():
        args += ["-x265-params", "hdr10=1:" + media.hdr.x265_params()]
    return args


def ffmpeg_args(source: Optional[Path], output: Path, encoder: EncoderSettings, ffmpeg: str = "ffmpeg",
                spec: Optional[OutputSpec] = None, filter_file: Optional[Path] = None) -> list[str]:
    """The whole ffmpeg command line of :func:`ffmpeg_options`, writing ``output``."""
    return [ffmpeg, "-hide_banner", "-y", *ffmpeg_options(source, encoder, spec, filter_file),
            path_arg(absolute(output), True)]


def shell_command(script: Path, source: Optional[Path], output: Path, encoder: EncoderSettings,
                  spec: Optional[OutputSpec] = None, filter_file: Optional[Path] = None) -> str:
    """The pipe as one POSIX shell line, every path absolute and quoted."""
    pipe = vspipe_args(absolute(script))
    return f"{shlex.join(pipe)} | {shlex.join(ffmpeg_args(source, output, encoder, spec=spec, filter_file=filter_file))}"


def absolute(path: os.PathLike | str) -> Path:
    """``path`` made absolute against the current folder (``~`` expanded), without resolving
    links: what every generated script and command names."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


_MP4 = (".mp4", ".m4v", ".mov")


def find_vspipe() -> Optional[str]:
    """vspipe of this environment first (next to this Python, e.g. the venv's bin), then PATH."""
    here = str(Path(sys.executable).parent)
    return shutil.which("vspipe", path=here + os.pathsep + os.environ.get("PATH", ""))


def vspipe_args(script: Path, vspipe: str = "vspipe", progress: bool = False, options: Sequence[str] = ()) -> list[str]:
    """vspipe writing the script's frames as y4m to stdout; ``options`` e.g. ``--start N --end M``."""
    return [vspipe, *(["-p"] if progress else []), "-c", "y4m", *options, path_arg(script), "-"]
