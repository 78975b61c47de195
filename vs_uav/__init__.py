"""vs-uav: Upscale-A-Video as a VapourSynth filter, a library and a command line.

The public names, the only ones generated ``.vpy`` scripts use (modules may move; these stay):

- ``vs_uav.upscale(clip, ...)``: ``core.uav.Upscale(clip, ...)`` for scripts that prefer imports;
- ``vs_uav.mark_cuts(clip, threshold=... | cuts_file=...)``: scene cuts marked for ``upscale``;
- ``with vs_uav.excerpt(first, end):``: the ``upscale`` made inside renders only those frames of its clip;
- ``vs_uav.apply_captions(clip, "captions.tsv")``: each scene's caption as its frames' prompt (``UAVPrompt``);
- ``vs_uav.UpscalePipeline``: the model on tensors (``from_pretrained``, ``__call__``, ``stream``);
- ``vs_uav.UpscaleSettings``: the one parameter model.

Importing the package is cheap: torch and VapourSynth load on first use.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["upscale", "mark_cuts", "excerpt", "apply_captions", "UpscalePipeline", "UpscaleSettings"]

_PUBLIC = {
    "upscale": "vs_uav.vsfilter.upscale",
    "mark_cuts": "vs_uav.vsfilter.scenes",
    "excerpt": "vs_uav.vsfilter.upscale",
    "apply_captions": "vs_uav.media.captions",
    "UpscalePipeline": "vs_uav.engine.pipeline",
    "UpscaleSettings": "vs_uav.settings",
}


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'vs_uav' has no attribute {name!r}")
