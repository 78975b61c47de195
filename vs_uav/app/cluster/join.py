"""The join: the finished segments into the output by stream copy (ffmpeg's concat demuxer),
with the source's audio; the output appears only once its frame count is the source's."""

from __future__ import annotations

import shutil
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Sequence

from vs_uav.media.children import child_options
from vs_uav.app.cluster.job import ClusterJob
from vs_uav.app.cluster.options import ClusterError
from vs_uav.media.probe import count_frames
from vs_uav.errors import last_line


def join_segments(job: ClusterJob, parts: Sequence[Path], work: Path, delay: Fraction = Fraction(0),
                  durations: Sequence[Fraction] = ()) -> None:
    """The segments joined by stream copy into ``job.output``, with what the one-machine pipe
    takes from the source (audio, subtitles, global tags: :func:`source_streams`); the output
    appears only once its frame count is the source's; ``delay``: the source's first frame time."""
    from vs_uav.media.output import path_arg, source_streams
    from vs_uav.media.render import ffmpeg_command

    ffmpeg = shutil.which("ffmpeg")
    if not ffmpeg:
        raise ClusterError("ffmpeg not found; install it or run `uav doctor`")
    listing = work / "segments.txt"
    # The concat demuxer's syntax: a quote inside a quoted path is written '\''.
    # Each part's exact duration (the segments are timed where they stand in the clip: worker.timed_args):
    # the next part starts there, not at the sum of durations rounded to the container's time base.
    lines = ["file '" + str(p).replace("'", "'\\''") + "'\n" + (f"duration {float(d):.6f}\n" if d else "")
             for p, d in zip(parts, [*durations, *[Fraction(0)] * (len(parts) - len(durations))])]
    listing.write_text("".join(lines), encoding="utf-8")
    offset = ["-itsoffset", f"{float(delay):.9f}"] if delay else []  # the source's first frame time
    inputs, maps = source_streams(Path(job.source), job.encoder, job.spec)
    args = [*offset, "-f", "concat", "-safe", "0", "-i", path_arg(listing, True), *inputs, "-map", "0:v:0", *maps,
            "-c:v", "copy"]
    output = Path(job.output)
    partial = work / "joined" / output.name  # in the work folder: never a name of the user's
    partial.parent.mkdir(exist_ok=True)
    run = subprocess.run(ffmpeg_command(ffmpeg, args, partial), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True, **child_options())
    try:
        if run.returncode:
            raise ClusterError(f"joining the segments failed (ffmpeg: {last_line(run.stderr) or run.returncode})")
        frames = count_frames(partial)
        if frames != job.spec.media.frames:
            raise ClusterError(f"the joined output has {frames} frames, the source {job.spec.media.frames}; "
                               f"the segments stay in {work}")
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
