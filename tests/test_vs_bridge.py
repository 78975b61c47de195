"""The native uav plugin (native/uav_bridge.c) and its Python side (vs_uav.vsfilter.bridge), on real
VapourSynth: autoload, signature, type checks, argument passing, errors, vspipe, several cores.

The implementation behind uav.Upscale is tests/bridge_impl.py, selected with $UAV_BRIDGE_IMPL.
"""

from __future__ import annotations

import gc
import inspect
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import bridge_impl
import pytest
import vapoursynth as vs
from setting_errors import row, row_id

from vs_uav.settings import SETTINGS, SETTINGS_BY_NAME, VS_RETURN, vs_signature

TESTS = Path(__file__).resolve().parent
IMPL = "bridge_impl:upscale"
VS_DIR = Path(vs.__file__).resolve().parent
core = vs.core


@pytest.fixture
def impl(monkeypatch):
    monkeypatch.setenv("UAV_BRIDGE_IMPL", IMPL)
    bridge_impl.CALLS.clear()
    return bridge_impl.CALLS


def blank(width: int = 8, height: int = 6, length: int = 3) -> vs.VideoNode:
    return core.std.BlankClip(width=width, height=height, length=length, format=vs.YUV444P8, color=[16, 128, 128])


def subprocess_env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, UAV_BRIDGE_IMPL=IMPL)


def test_plugin_is_autoloaded_from_the_wheel_plugin_folder():
    plugin = core.uav
    assert plugin.identifier == "com.vs-uav.uav" and plugin.namespace == "uav"
    path = Path(plugin.plugin_path)
    assert path.parent == VS_DIR / "plugins" / "uav", path
    assert (path.parent / "manifest.vs").read_text().splitlines() == ["[VapourSynth Manifest V1]", path.stem]
    assert {"Upscale", "BridgeRegister", "BridgeUnregister"} <= set(dir(plugin))


def test_signature_is_the_settings_model():
    fn = core.uav.Upscale
    assert fn.signature == vs_signature(), \
        "the installed plugin is stale (vs_uav/settings.py changed): rebuild it with `make setup` or `pip install -e .`"
    assert fn.return_signature == VS_RETURN
    params = inspect.signature(fn).parameters
    assert list(params) == ["clip"] + [s.name for s in SETTINGS]
    assert params["clip"].default is inspect.Parameter.empty and "VideoNode" in str(params["clip"].annotation)
    for s in SETTINGS:
        annotation = str(params[s.name].annotation)
        assert params[s.name].default is None, s.name
        expected = {"float": "float", "data": "str", "float[]": "Sequence[float]"}[s.vs_type]
        assert expected in annotation, (s.name, annotation)
    # Integers are never declared int: VapourSynth would truncate 2.7 and overflow at 2**63
    # before Python sees the value (see Setting.vs_type).
    assert not any(s.vs_type.startswith("int") for s in SETTINGS)
    assert SETTINGS_BY_NAME["seed"].vs_type == "data" and SETTINGS_BY_NAME["steps"].vs_type == "float"


@pytest.mark.parametrize("kwargs", [dict(steps="many"), dict(guidance_scale="high"), dict(prompt=["a", "b"]),
                                    dict(steps=[1, 2]), dict(propagation_steps=["x"])])
def test_wrong_types_are_refused_by_vapoursynth(impl, kwargs):
    with pytest.raises((vs.Error, ValueError, TypeError)):
        core.uav.Upscale(blank(), **kwargs)
    assert impl == []  # refused before reaching Python


def test_unknown_keyword_and_missing_clip_are_refused(impl):
    with pytest.raises(vs.Error, match="stepz"):
        core.uav.Upscale(blank(), stepz=3)
    with pytest.raises(vs.Error, match="clip"):
        core.uav.Upscale(prompt="a koala")
    assert impl == []


def test_arguments_reach_python_and_the_clip_comes_back(impl):
    src = blank()
    out = core.uav.Upscale(src, prompt="a koala", steps=12, guidance_scale=5, propagation_steps=[3, 5],
                           seed=2**40, scene_change=False)
    (call,) = impl
    clip = call.pop("clip")
    assert isinstance(clip, vs.VideoNode) and (clip.width, clip.height, clip.num_frames) == (8, 6, 3)
    # Only what was passed arrives (defaults are the settings model's business), with VapourSynth's types.
    assert call == {"prompt": "a koala", "steps": 12, "guidance_scale": 5.0, "propagation_steps": [3, 5],
                    "seed": 2**40, "scene_change": 0}
    assert type(call["guidance_scale"]) is float
    assert (out.width, out.height, out.num_frames, out.format.id) == (32, 24, 3, vs.YUV444P8)
    assert out.get_frame(2).props["UAVTestPrompt"] == "a koala"


def test_integers_arrive_as_written_whole_and_exact(impl):
    """Floats for integer parameters are not truncated on the way (the settings model refuses
    them), bools stay bools, and a 64-bit seed arrives exactly, whatever its size."""
    core.uav.Upscale(blank(), steps=2.7, seed=2**63 - 1, chunk_size=16, propagation_steps=[1.5, 2],
                     scene_change=True)
    core.uav.Upscale(blank(), seed=2**63, noise_level=1e300)
    core.uav.Upscale(blank(), seed=1.9)
    core.uav.Upscale(blank(), seed=True)
    calls = [{k: v for k, v in c.items() if k != "clip"} for c in impl]
    assert calls == [dict(steps=2.7, seed=2**63 - 1, chunk_size=16, propagation_steps=[1.5, 2], scene_change=1),
                     dict(seed=2**63, noise_level=1e300), dict(seed=1.9), dict(seed=True)]
    assert type(calls[0]["chunk_size"]) is int and type(calls[0]["seed"]) is int and type(calls[3]["seed"]) is bool


# The settings table's rows whose values VapourSynth can pass (numbers, arrays of them), then
# what only the plugin sees: a word for a number.
VS_ROWS = [row(steps=2.7), row(seed=1.9), row(seed=2**63), row(seed=-1), row(chunk_size=8.5), row(noise_level=-3),
           row(scene_change=0.5), row(propagation_steps=[3, 3]), row(propagation_steps=[2.5]),
           (dict(seed="many"), "seed='many'; accepted: an integer in [0, 9223372036854775807]"),
           (dict(steps=4, propagation_steps=[4]), "propagation_steps=[4]; accepted: distinct step indices in [0, 3]")]


@pytest.mark.parametrize("kwargs, message", VS_ROWS, ids=[row_id(r) for r in VS_ROWS])
def test_the_filter_refuses_bad_numbers_in_one_line(monkeypatch, kwargs, message):
    """Through the real plugin and filter: one line with the prefix, the value as written
    and what is accepted, before any model is loaded (the folder does not exist)."""
    monkeypatch.delenv("UAV_BRIDGE_IMPL", raising=False)
    with pytest.raises(vs.Error) as e:
        core.uav.Upscale(blank(16, 16), model="/nonexistent/uav", **kwargs)
    assert str(e.value).startswith(f"uav.Upscale: {message}"), str(e.value)
    assert "\n" not in str(e.value)


def test_method_call_bytes_and_single_values(impl):
    out = blank().uav.Upscale(prompt=b"bytes", propagation_steps=4)
    assert out.width == 32
    call = impl[-1]
    # VapourSynth passes a one-value array bare; the bridge hands it on as the list it is.
    assert call["prompt"] == b"bytes" and call["propagation_steps"] == [4]


def test_repeated_calls_are_independent(impl):
    outs = [core.uav.Upscale(blank(width=8 + 2 * i), prompt=f"p{i}") for i in range(20)]
    assert [o.width for o in outs] == [4 * (8 + 2 * i) for i in range(20)]
    assert [c["prompt"] for c in impl] == [f"p{i}" for i in range(20)]
    assert [o.get_frame(0).props["UAVTestPrompt"] for o in outs[::5]] == [f"p{i}" for i in range(0, 20, 5)]


@pytest.mark.parametrize("prompt, message", [
    ("fail", "uav.Upscale: prompt='fail'; accepted: anything else (second line of the message)"),
    ("crash", "uav.Upscale: KeyError: 'no such thing'"),
    ("none", "uav.Upscale: the implementation returned NoneType, not a video clip"),
])
def test_python_errors_become_one_line_vs_errors(impl, prompt, message):
    with pytest.raises(vs.Error) as e:
        core.uav.Upscale(blank(), prompt=prompt)
    assert str(e.value) == message
    # The plugin still works afterwards.
    assert core.uav.Upscale(blank(), prompt="ok").width == 32


def test_bad_implementation_setting_is_reported(monkeypatch):
    monkeypatch.setenv("UAV_BRIDGE_IMPL", "no_such_module:upscale")
    with pytest.raises(vs.Error, match=r"^uav.Upscale: the implementation no_such_module:upscale cannot be loaded "
                                       r"\(No module named 'no_such_module'\)$"):
        core.uav.Upscale(blank())


def test_the_default_implementation_is_vs_uav_filter(monkeypatch):
    monkeypatch.delenv("UAV_BRIDGE_IMPL", raising=False)
    with pytest.raises(vs.Error, match=r"^uav.Upscale: /nonexistent/uav: model folder not found"):
        core.uav.Upscale(core.std.BlankClip(width=16, height=16, length=2), model="/nonexistent/uav")


def test_registration_replaces_and_releases_the_python_function(impl):
    released = []

    class Impl:
        def __init__(self, name):
            self.name = name

        def __call__(self, **kwargs):
            if self.name == "raise":
                raise ZeroDivisionError("division by zero")
            return kwargs["clip"]

        def __del__(self):
            released.append(self.name)

    try:
        core.uav.BridgeRegister(func=Impl("raise"))
        # An exception that escapes the registered function: VapourSynth dumps a traceback,
        # the plugin keeps its last line.
        with pytest.raises(vs.Error) as e:
            core.uav.Upscale(blank())
        assert str(e.value) == "uav.Upscale: ZeroDivisionError: division by zero"
        core.uav.BridgeRegister(func=Impl("pass"))
        gc.collect()
        assert released == ["raise"]
        assert core.uav.Upscale(blank()).width == 8  # Impl("pass") returns the clip as it is
        core.uav.BridgeUnregister()
        gc.collect()
        assert released == ["raise", "pass"]
    finally:
        core.uav.BridgeUnregister()
    # Unregistered: the next call registers vs_uav.vsfilter.bridge again by itself.
    assert core.uav.Upscale(blank()).width == 32 and len(impl) == 1


MULTI_ENV = '''
import json, gc, weakref
import vapoursynth as vs
import bridge_impl
from vs_uav.vsfilter import bridge as vs_bridge

class Policy(vs.EnvironmentPolicy):
    def on_policy_registered(self, api):
        self.api, self.current = api, None
    def get_current_environment(self):
        return self.current
    def set_environment(self, env):
        old, self.current = self.current, env
        return old

policy = Policy()
vs.register_policy(policy)
api = policy.api

def upscale_in(env, width):
    with api.wrap_environment(env).use():
        core = vs.core
        out = core.uav.Upscale(core.std.BlankClip(width=width, height=4, length=2), prompt=str(width))
        out.get_frame(1)
        return out.width, weakref.ref(core.core)

envs = [api.create_environment() for _ in range(3)]
first = [upscale_in(env, 4 + i) for i, env in enumerate(envs)]
again = [upscale_in(env, 8 + i) for i, env in enumerate(envs)]
registered = len(vs_bridge._registered_envs)
api.destroy_environment(envs[0])
after_destroy = len(vs_bridge._registered_envs)
survivor = upscale_in(envs[1], 3)[0]
late = api.create_environment()
late_width, late_core = upscale_in(late, 5)
for env in envs[1:] + [late]:
    api.destroy_environment(env)
del envs, late
gc.collect()
print(json.dumps(dict(first=[w for w, _ in first], again=[w for w, _ in again], registered=registered,
                      after_destroy=after_destroy, survivor=survivor, late=late_width,
                      left=len(vs_bridge._registered_envs), calls=len(bridge_impl.CALLS),
                      cores_alive=sum(r() is not None for _, r in first + again) + (late_core() is not None))))
api.unregister_policy()
'''


def run_python(tmp_path, source: str) -> dict:
    """Run ``source`` in a fresh interpreter with the test bridge; its last stdout line is JSON."""
    script = tmp_path / "script.py"
    script.write_text(source)
    run = subprocess.run([sys.executable, str(script)], env=subprocess_env(), capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_several_cores_in_one_process(tmp_path):
    got = run_python(tmp_path, MULTI_ENV)
    assert got == dict(first=[16, 20, 24], again=[32, 36, 40], registered=3, after_destroy=2, survivor=12, late=20,
                       left=0, calls=8, cores_alive=0), got


FIRST_USE_FROM_THREADS = '''
import json, threading
import vapoursynth as vs
import bridge_impl

core = vs.core  # fresh: nothing registered yet; 8 threads race for the first use
barrier = threading.Barrier(8)
widths = []

def work(i):
    barrier.wait()
    widths.append(core.uav.Upscale(core.std.BlankClip(width=4 + i, height=4, length=1)).get_frame(0).width)

threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(dict(widths=sorted(widths), calls=len(bridge_impl.CALLS))))
'''


def test_first_use_from_many_threads(tmp_path):
    assert run_python(tmp_path, FIRST_USE_FROM_THREADS) == dict(widths=[4 * (4 + i) for i in range(8)], calls=8)


VPY = '''
import vapoursynth as vs
core = vs.core
clip = core.std.BlankClip(width=10, height=6, length=3, format=vs.YUV444P8, color=[16, 128, 128])
core.uav.Upscale(clip, prompt="from vspipe", steps=2).set_output()
'''


@pytest.mark.slow
def test_vspipe_renders_through_the_plugin(tmp_path):
    vspipe = Path(sys.executable).with_name("vspipe")
    if not vspipe.exists():
        vspipe = Path(shutil.which("vspipe") or "vspipe")
    script = tmp_path / "script.vpy"
    script.write_text(VPY)
    run = subprocess.run([str(vspipe), "-c", "y4m", str(script), "-"], env=subprocess_env(), capture_output=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    header, _, body = run.stdout.partition(b"\n")
    fields = header.split()
    assert fields[0] == b"YUV4MPEG2" and b"W40" in fields and b"H24" in fields, header
    frame = b"FRAME\n" + bytes(40 * 24 * 3)
    assert len(body) == 3 * len(frame) and body.startswith(b"FRAME\n"), len(body)


@pytest.mark.slow
def test_vspipe_reports_python_errors_cleanly(tmp_path):
    script = tmp_path / "script.vpy"
    script.write_text(VPY.replace("from vspipe", "fail"))
    vspipe = Path(sys.executable).with_name("vspipe")
    run = subprocess.run([str(vspipe), "-i", str(script), "-"], env=subprocess_env(), capture_output=True, text=True,
                         timeout=120)
    assert run.returncode != 0
    assert "uav.Upscale: prompt='fail'; accepted: anything else (second line of the message)" in run.stderr


HOST = r'''
#include <dlfcn.h>
#include <stdio.h>
#include "VapourSynth4.h"
/* A VapourSynth host without Python: a core autoloads the uav plugin, which must refuse clearly. */
int main(int argc, char **argv) {
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) { printf("dlopen failed: %s\n", dlerror()); return 2; }
    const VSAPI *(*get)(int) = (const VSAPI *(*)(int))dlsym(lib, "getVapourSynthAPI");
    const VSAPI *vsapi = get(VS_MAKE_VERSION(4, 0));
    VSCore *core = vsapi->createCore(0);
    VSPlugin *uav = vsapi->getPluginByNamespace("uav", core);
    if (!uav) { printf("uav plugin not loaded\n"); return 3; }
    VSMap *args = vsapi->createMap();
    VSMap *blank = vsapi->invoke(vsapi->getPluginByNamespace("std", core), "BlankClip", args);
    vsapi->mapConsumeNode(args, "clip", vsapi->mapGetNode(blank, "clip", 0, NULL), maReplace);
    VSMap *out = vsapi->invoke(uav, "Upscale", args);
    const char *err = vsapi->mapGetError(out);
    printf("%s\n", err ? err : "no error");
    vsapi->freeMap(out);
    vsapi->freeMap(blank);
    vsapi->freeMap(args);
    vsapi->freeCore(core);
    return 0;
}
'''


def test_a_host_without_python_gets_a_clear_error(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    library = VS_DIR / "libvapoursynth.so.4"
    if not cc or not library.exists():
        pytest.skip("needs a C compiler and the Linux vapoursynth wheel")
    (tmp_path / "host.c").write_text(textwrap.dedent(HOST))
    subprocess.run([cc, "-I", str(VS_DIR / "include"), str(tmp_path / "host.c"), "-o", str(tmp_path / "host"),
                    "-ldl"], check=True, timeout=120)
    run = subprocess.run([str(tmp_path / "host"), str(library)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().startswith("uav.Upscale: Python is not available in this process;"), run.stdout
