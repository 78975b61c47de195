"""The vs-uav preset editor (``uav-gui``): settings to a ready .vpy script and encoder command.

Imports no torch: the editor only writes scripts, vspipe runs them.
"""

from __future__ import annotations

from typing import Optional, Sequence

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .window import main as run

    return run(argv)
