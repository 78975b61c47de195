"""A trivial implementation of uav.Upscale for tests of the native bridge.

Selected with UAV_BRIDGE_IMPL=bridge_impl:upscale (this folder on the Python path): it
records what it was called with and returns the clip point-resized 4x, with the prompt in
a frame prop, so the tests see the real plugin -> Python -> plugin round trip.
"""

from __future__ import annotations

from typing import Any

import vapoursynth as vs

CALLS: list[dict[str, Any]] = []


def upscale(clip: vs.VideoNode, **kwargs: Any) -> vs.VideoNode:
    CALLS.append(dict(kwargs, clip=clip))
    if kwargs.get("prompt") == "fail":
        raise ValueError("prompt='fail'; accepted: anything else\n(second line of the message)")
    if kwargs.get("prompt") == "crash":
        raise KeyError("no such thing")
    if kwargs.get("prompt") == "none":
        return None  # type: ignore[return-value]
    out = clip.resize.Point(clip.width * 4, clip.height * 4)
    prompt = kwargs.get("prompt", "")
    return out.std.SetFrameProps(UAVTestPrompt=prompt.decode() if isinstance(prompt, bytes) else prompt)
