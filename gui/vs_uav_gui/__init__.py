"""The vs-uav preset editor (``uav-gui``): settings to a ready .vpy script and encoder command.

Imports no torch until a before/after preview runs (:mod:`vs_uav_gui.preview`): the editor
writes scripts, vspipe runs them.
"""

from __future__ import annotations

from typing import Optional, Sequence

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .window import main as run

    return run(argv)
