"""From a preset and a source to a script and the command that renders it (what the editor and `uav script` show).
"""

from __future__ import annotations

import functools
import logging
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from vs_uav.media.encoder import EncoderSettings
from vs_uav.media.output import OutputSpec, absolute, needs_filter_file, output_spec, shell_command, video_filter
from vs_uav.media.probe import MediaInfo, interlaced_message
from vs_uav.media.probe import probe as probe_media
from vs_uav.media.script import make_script, reading_script

if TYPE_CHECKING:
    from vs_uav.app.presets import Preset

logger = logging.getLogger(__name__)


def default_output(source: Path, encoder: EncoderSettings) -> Path:
    """Next to the source, in the codec's usual container: 'clip.mp4' -> 'clip.uav.mkv'; an image
    sequence's next to its frames, named as they are: 'scan/reel1_%07d.dpx' -> 'scan/reel1.uav.mkv',
    'scan/reel1/%07d.dpx' -> 'scan/reel1.uav.mkv'."""
    from vs_uav.media.encoder import IMAGE_CODECS
    from vs_uav.media.sequence import is_pattern

    source = Path(source)
    if encoder.codec in IMAGE_CODECS:  # an image sequence: its frames in a folder named after the source
        video = default_output(source, replace(encoder, codec="ffv1"))
        return video.with_suffix("") / f"%07d{encoder.container}"
    if is_pattern(source):
        name = source.name.split("%", 1)[0].rstrip("_.- ")
        return (source.parent if name else source.parent.parent) / \
            f"{name or source.parent.name}.uav{encoder.container}"
    return source.with_name(f"{source.stem}.uav{encoder.container}")


def default_script(source: Path) -> Path:
    return Path(source).with_name(f"{Path(source).stem}.uav.vpy")


@dataclass(frozen=True)
class RenderPlan:
    """What the editor previews and ``uav script`` writes: a script and its command."""

    script_path: Path
    output: Path
    script: str
    command: str
    spec: Optional[OutputSpec] = None  # None: the source was not probed (no tags in the command)
    files: tuple[tuple[Path, str], ...] = ()  # other files the command reads (a long filter graph)

    @property
    def note(self) -> str:
        """What the output cannot keep of the source, in one line ("" when nothing)."""
        return self.spec.note if self.spec is not None else ""

    def write(self) -> None:
        """Write the script and the files its command reads."""
        for path, text in ((self.script_path, self.script), *self.files):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")


@functools.lru_cache(maxsize=16)
def _probe_file(source: Path, stamp: tuple[int, int]) -> Optional[MediaInfo]:
    try:
        return probe_media(source, reading_script(source))
    except ValueError as e:
        logger.info("%s: not probed (%s); the command carries no tags of it", source, e)
        return None


def cached_probe(source: Path) -> Optional[MediaInfo]:
    """:func:`vs_uav.media.probe` of a script reading ``source`` with nothing in between,
    remembered while the file is unchanged; None when it is not a readable video."""
    source = absolute(source)
    try:
        st = source.stat()
    except OSError:
        return None
    return _probe_file(source, (st.st_mtime_ns, st.st_size)) if source.is_file() else None


def plan_preset_render(preset: "Preset", source: Path, script_path: Optional[Path] = None,
                       output: Optional[Path] = None, *, namespace: bool = True, media: Optional[MediaInfo] = None,
                       probe: bool = True) -> RenderPlan:
    """The .vpy text and the matching shell command for ``preset`` applied to ``source``, with
    absolute paths. ``media``: what :func:`vs_uav.media.probe` says of the source; by default
    (``probe``) it is probed when it is a file, and the command keeps its format and tags."""
    source = absolute(source)
    script_path = absolute(script_path if script_path is not None else default_script(source))
    output = absolute(output if output is not None else default_output(source, preset.encoder))
    if media is None and probe:
        media = cached_probe(source)
    spec = output_spec(media, preset.encoder, container=output.suffix) if media is not None else None
    files: tuple[tuple[Path, str], ...] = ()
    filter_file = None
    if spec is not None and needs_filter_file(spec):
        filter_file = script_path.with_name(f"{script_path.stem}.filter")
        files = ((filter_file, video_filter(spec)),)
    command = shell_command(script_path, source, output, preset.encoder, spec, filter_file)
    title = [f"Preset: {preset.name}" + (f" - {preset.description}" if preset.description else "")]
    if media is not None and media.interlaced:  # the filter refuses it; say so where it is read first
        title.append("Warning: " + interlaced_message(source, media, option=False))
    title = [line for t in title for line in textwrap.wrap(t, 86, break_on_hyphens=False)]
    text = make_script(source, preset.settings, namespace=namespace, command=command, title=title, spec=spec,
                       encoder=preset.encoder)
    return RenderPlan(script_path, output, text, command, spec, files)
