"""README sections generated from code, so that they cannot drift.

- the parameter table, from the settings models (:mod:`vs_uav.settings`, :mod:`vs_uav.media.encoder`);
- the troubleshooting table, from ``uav doctor``'s fixes (:data:`vs_uav.app.doctor.FIXES`).

    python -m vs_uav.app.docs --write   # update README.md
    python -m vs_uav.app.docs --check   # exit 1 when README.md is out of date (a test runs this)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from vs_uav.app.doctor import FIXES
from vs_uav.media.encoder import ENCODER_SETTINGS
from vs_uav.settings import SETTINGS, Setting

README = Path(__file__).resolve().parents[2] / "README.md"
SECTIONS = ("params", "troubleshooting")


def _default(s: Setting) -> str:
    if isinstance(s.default, list):
        return "[]"
    if s.default == "":
        return "''"
    return repr(s.default) if isinstance(s.default, str) else str(s.default)


def _accepted(s: Setting) -> str:
    if s.choices:
        return ", ".join(f"`{c}`" for c in s.choices)
    if s.type is bool:
        return "True, False"
    if s.min is not None or s.max is not None:
        lo = "" if s.min is None else f"{s.min:g}"
        hi = "" if s.max is None else (f"{s.max:g}" if s.max < 1e6 else "2^63-1")
        return f"{lo}..{hi}" + (" (list)" if isinstance(s.default, list) else "")
    return "text"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def params_table() -> str:
    rows = ["| parameter | default | accepted | what it does |", "|---|---|---|---|"]
    for s in SETTINGS:
        rows.append(f"| `{s.name}` | `{_default(s)}` | {_accepted(s)} | {_cell(s.help)} |")
    rows += ["", "Encoder options of `uav upscale`, `uav script` and presets (`[encoder]` table):", "",
             "| option | default | accepted | what it does |", "|---|---|---|---|"]
    for s in ENCODER_SETTINGS:
        rows.append(f"| `--{s.name.replace('_', '-')}` | `{_default(s)}` | {_accepted(s)} | {_cell(s.help)} |")
    return "\n".join(rows)


def troubleshooting_table() -> str:
    rows = ["| `uav doctor` line | what to do |", "|---|---|"]
    for name, fix in FIXES.items():
        rows.append(f"| `{name}` | {_cell(fix)} |")
    return "\n".join(rows)


def render(text: str) -> str:
    """``text`` with every generated section replaced by its current content."""
    content = {"params": params_table(), "troubleshooting": troubleshooting_table()}
    for name in SECTIONS:
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
        if not pattern.search(text):
            raise ValueError(f"README section markers {start} ... {end} not found")
        text = pattern.sub(lambda _: f"{start}\n{content[name]}\n{end}", text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vs_uav.app.docs", description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="update README.md")
    mode.add_argument("--check", action="store_true", help="exit 1 when README.md is out of date")
    ap.add_argument("--readme", type=Path, default=README)
    args = ap.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    new = render(text)
    if args.write:
        if new != text:
            args.readme.write_text(new, encoding="utf-8")
        return 0
    if new != text:
        sys.stderr.write(f"{args.readme} is out of date: run `python -m vs_uav.app.docs --write`\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
