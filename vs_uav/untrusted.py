"""Text from outside (file names, tags, presets, captions, edits, options) made safe to use.

Pure helpers, no I/O: numbers read with ASCII digits only (``int('٣')`` is 3 and
``'²'.isdigit()`` is True, neither is a number a user typed on purpose), text made safe for a
comment of a generated script, control characters found, and the nesting depth of a JSON or
TOML document measured before a parser recurses into it.
"""

from __future__ import annotations

import re
from typing import Optional

# Characters that end a line for Python (CR, LF), for str.splitlines (VT, FF, FS, GS, RS, NEL,
# LS, PS) or for an editor; NUL, which no Python source may hold.
LINE_ENDS = "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x00"

_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)


def ascii_int(text: str) -> int:
    """``text`` as an integer written with ASCII digits (an optional sign, no spaces inside);
    ValueError otherwise."""
    s = str(text).strip()
    if not _INT.fullmatch(s):
        raise ValueError(f"invalid int value: {text!r}")
    return int(s)


def ascii_float(text: str) -> float:
    """``text`` as a finite decimal number written with ASCII digits; ValueError otherwise (also
    for 'nan', 'inf' and '1_0', which float() reads)."""
    s = str(text).strip()
    if not _FLOAT.fullmatch(s):
        raise ValueError(f"invalid float value: {text!r}")
    return float(s)


def is_ascii_digits(text: str) -> bool:
    """Whether ``text`` is one or more ASCII digits, nothing else (``str.isdigit`` takes '²')."""
    return bool(text) and text.isascii() and text.isdigit()


def escaped(text: str) -> str:
    """``text`` with every character that is not printable (line ends of any kind, NUL, other
    control and format characters such as bidirectional overrides) written as its escape,
    ``\\r``, ``\\x00``, ``\\u2028``: one line that shows what it holds."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(text))


# A comment in a script's first two lines matching this declares its encoding (PEP 263): text
# from outside must not, e.g. 'coding: utf-7', under which '+AAo-' decodes to a line end.
_CODING = re.compile(r"(coding)([:=])")


def comment(text: str) -> str:
    """One comment line of a generated script holding ``text``: nothing in it can end the line
    or declare the file's encoding."""
    return "# " + _CODING.sub(lambda m: m.group(1) + ("\\x3a" if m.group(2) == ":" else "\\x3d"), escaped(text))


def control_character(text: str, allowed: str = "") -> Optional[str]:
    """The first control or line-separating character of ``text`` not in ``allowed``, escaped
    (e.g. ``'\\x00'``), or None."""
    for ch in str(text):
        if ch not in allowed and (ch in LINE_ENDS or not ch.isprintable()) and ch not in " ":
            return repr(ch)
    return None


def nesting_depth(text: str, limit: int) -> int:
    """How deeply ``[``/``{`` nest in a JSON or TOML document, outside its strings; counting
    stops past ``limit`` (the caller refuses the document then). Strings are skipped with their
    escapes ('...' literal, "..." basic, and TOML's triple-quoted forms), ``#`` comments too."""
    depth = deepest = 0
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in "\"'":
            i = _string_end(text, i)
            continue
        if ch == "#":  # a TOML comment (JSON has none; a '#' outside a JSON string is invalid anyway)
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
        elif ch in "]}":
            depth = max(0, depth - 1)
        i += 1
    return deepest


def _string_end(text: str, i: int) -> int:
    quote = text[i]
    triple = text.startswith(quote * 3, i)
    close = quote * 3 if triple else quote
    j = i + len(close)
    while j < len(text):
        if quote == '"' and text[j] == "\\":
            j += 2
            continue
        if text.startswith(close, j):
            return j + len(close)
        if not triple and text[j] == "\n":  # an unclosed one-line string: the parser will say so
            return j
        j += 1
    return len(text)


__all__ = ["LINE_ENDS", "ascii_float", "ascii_int", "comment", "control_character", "escaped", "is_ascii_digits",
           "nesting_depth"]
