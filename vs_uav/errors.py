"""The one error base, and the one-line rule.

Every error class vs-uav defines derives from :class:`UavError`, and keeps the builtin base it
always had (``ValueError`` for bad input, ``RuntimeError`` for a failed step), so callers that
catch those still do; plain bad input elsewhere is a ``ValueError``. Either way the message is
one line naming the parameter or file, the value, and what is accepted. :func:`one_line` is how any error, ours or another library's, is
shown in one line, and :func:`last_line` what a tool's output says last.
"""

from __future__ import annotations

_TRACEBACK = "Traceback (most recent call last):"


class UavError(Exception):
    """An error vs-uav raises on purpose; its message is one line."""


def one_line(error: BaseException | str) -> str:
    """``error``'s message on one line. A message that holds a Python traceback (a failed
    subprocess's, VapourSynth's) gives its last line, the exception itself; any other is kept
    whole with its line breaks and runs of spaces made single spaces (transformers' and
    ffmpeg's messages span lines); an empty one gives the exception's type name."""
    text = error if isinstance(error, str) else str(error)
    if _TRACEBACK in text:
        text = [line for line in text.splitlines() if line.strip()][-1]
    text = " ".join(text.split())
    if not text and not isinstance(error, str):
        return type(error).__name__
    return text


def last_line(output: str) -> str:
    """The last non-empty line of a tool's output (a log, ffmpeg's stderr): where it says
    what went wrong. "" for empty output."""
    rows = [row.strip() for row in output.splitlines() if row.strip()]
    return rows[-1] if rows else ""

