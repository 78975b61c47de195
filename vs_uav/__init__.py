"""vs-uav: Upscale-A-Video as a VapourSynth filter, a library and a command line.

``vs_uav.upscale(clip, ...)`` is ``core.uav.Upscale(clip, ...)`` for scripts that prefer
imports. Importing the package is cheap: torch and VapourSynth load on first use.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["upscale", "UpscalePipeline", "UpscaleSettings"]


def __getattr__(name: str) -> Any:
    if name == "upscale":
        from .filter import upscale

        return upscale
    if name == "UpscalePipeline":
        from .pipeline import UpscalePipeline

        return UpscalePipeline
    if name == "UpscaleSettings":
        from .settings import UpscaleSettings

        return UpscaleSettings
    raise AttributeError(f"module 'vs_uav' has no attribute {name!r}")
