"""The Python half of ``core.uav.Upscale``.

The native plugin (``native/uav_bridge.c``, autoloaded from
``site-packages/vapoursynth/plugins/uav/``) only registers the ``uav`` namespace. On the
first ``core.uav.Upscale`` call in a core it imports this module and calls
:func:`_register_from_native`, which hands the plugin :func:`_upscale` through the hidden
``core.uav.BridgeRegister(func=...)``; every call then goes ``uav.Upscale`` -> ``_upscale`` ->
the implementation, ``vs_uav.vsfilter.upscale.upscale`` unless ``$UAV_BRIDGE_IMPL`` names another
(``module:function``, used by the tests). When the VapourSynth environment is destroyed
the plugin's reference is released again (``core.uav.BridgeUnregister()``) so the core can be
freed.

VapourSynth type-checks the arguments against the signature generated from
``vs_uav.settings`` before they arrive here; they come as keyword arguments (``clip`` a
``vs.VideoNode``, arrays as lists, data as ``str`` or ``bytes``). Integer settings are
declared ``float`` or ``data`` so that VapourSynth neither truncates ``2.7`` nor overflows
on ``2**63`` (``Setting.vs_type``); :func:`_upscale` turns them back into what the caller
wrote (``Setting.from_vs``) for the settings model to check.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any, Callable

import vapoursynth as vs

from vs_uav.errors import one_line
from vs_uav.settings import SETTINGS_BY_NAME

NAME = "uav.Upscale"
IMPL_ENV = "UAV_BRIDGE_IMPL"
DEFAULT_IMPL = "vs_uav.vsfilter.upscale:upscale"

logger = logging.getLogger(__name__)
# Environments whose core holds our function; each releases it when destroyed.
_registered_envs: set[int] = set()


def implementation() -> Callable[..., vs.VideoNode]:
    """The function behind ``uav.Upscale``: ``$UAV_BRIDGE_IMPL`` (``module:function``), else
    ``vs_uav.vsfilter.upscale.upscale``. Read on every call."""
    spec = os.environ.get(IMPL_ENV, "").strip() or DEFAULT_IMPL
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ValueError(f"{IMPL_ENV}={spec!r}; accepted: module:function")
    try:
        func = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise vs.Error(f"the implementation {spec} cannot be loaded ({e})") from e
    if not callable(func):
        raise vs.Error(f"the implementation {spec} is not callable")
    return func


def _message(e: BaseException) -> str:
    """One line, ``uav.Upscale: ...``; the type is kept for unexpected errors."""
    text = one_line(e)
    if not isinstance(e, (vs.Error, ValueError)) and not text.startswith(NAME + ":"):
        text = f"{type(e).__name__}: {text}"
    return text if text.startswith(NAME + ":") else f"{NAME}: {text}"


def _upscale(**kwargs: Any) -> dict[str, Any]:
    """What the plugin calls with the arguments of ``uav.Upscale`` as keywords. Returns
    ``{"clip": node}`` or ``{"error": "uav.Upscale: ..."}``: an exception raised here would
    reach the plugin with VapourSynth's traceback dump, an error key arrives as it is."""
    try:
        impl = implementation()
        clip = kwargs.pop("clip")
        # Integers travel as float or data (Setting.vs_type): back to what the caller wrote.
        kwargs = {k: SETTINGS_BY_NAME[k].from_vs(v) if k in SETTINGS_BY_NAME else v for k, v in kwargs.items()}
        out = impl(clip, **kwargs)
        if not isinstance(out, vs.VideoNode):
            raise vs.Error(f"the implementation returned {type(out).__name__}, not a video clip")
    except Exception as e:
        logger.debug("%s failed", NAME, exc_info=True)  # the traceback, for whoever wants it
        return {"error": _message(e)}
    return {"clip": out}


def register() -> None:
    """Give the ``uav`` plugin of the current environment's core its Python implementation.
    The plugin does this itself on first use; harmless to repeat."""
    core = vs.core
    if not hasattr(core, "uav"):
        raise RuntimeError("the native uav plugin is not loaded in this core; it is installed with vs-uav into "
                           "site-packages/vapoursynth/plugins/uav/ (reinstall: pip install -e .)")
    core.uav.BridgeRegister(func=_upscale)
    env = vs.get_current_environment()
    env_id = env.env_id
    if env_id in _registered_envs:
        return
    uav = core.uav

    def release() -> None:
        _registered_envs.discard(env_id)
        uav.BridgeUnregister()

    vs.register_on_destroy(release)
    _registered_envs.add(env_id)


def _register_from_native() -> str:
    """Called by the plugin (holding the GIL) on the first use in a core: '' or an error."""
    try:
        register()
    except Exception as e:
        return f"{NAME}: cannot register the Python implementation: {' '.join(str(e).split())}"
    return ""
