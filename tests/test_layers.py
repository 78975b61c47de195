"""The house in layers: each subpackage imports only from the layers below it (imports under
``if TYPE_CHECKING:`` and inside functions included), no module reaches itself through
imports, and generated scripts use only the package's public names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Lowest first. A module may import from its own layer and the ones before it.
LAYERS = (
    ("vs_uav.settings", "vs_uav.errors", "vs_uav.untrusted"),  # the parameter model, the error base, untrusted text
    ("vs_uav.core",),  # the paper's mathematics: torch only, no I/O, no VapourSynth
    ("vs_uav.weights",),  # the model folder: layout, reading, verifying, downloading, converting
    ("vs_uav.engine",),  # the pipeline, the chunk state and driver, the engine cache
    ("vs_uav.vsfilter",),  # core.uav.Upscale, the native bridge's Python half, scene cuts
    ("vs_uav.media",),  # probe, encoder options, the .vpy writer, the vspipe | ffmpeg runner, preflight
    ("vs_uav.app",),  # the job, the CLI, the cluster, presets, doctor, selftest, docs
    ("vs_uav_gui",),  # the preset editor
    ("vs_uav.__main__",),
)
# Names a module below the top may take from the package itself (``vs_uav/__init__.py`` loads
# the public names lazily from every layer; importing those from inside would go round it).
PACKAGE_NAMES = {"__version__"}
# What no module of a layer may import at all.
FORBIDDEN = {
    "vs_uav.settings": {"torch", "vapoursynth"},
    "vs_uav.errors": {"torch", "vapoursynth"},
    "vs_uav.untrusted": {"torch", "vapoursynth"},
    "vs_uav.core": {"vapoursynth", "subprocess", "safetensors"},
    "vs_uav.weights": {"vapoursynth", "subprocess"},
    "vs_uav.engine": {"vapoursynth", "subprocess"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for package, root in (("vs_uav", REPO / "vs_uav"), ("vs_uav_gui", REPO / "gui" / "vs_uav_gui")):
        for path in root.rglob("*.py"):
            name = ".".join((package, *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
            found[name] = path
    return found


def _imports(name: str, path: Path) -> list[tuple[int, str, tuple[str, ...]]]:
    """(line, module, names) of every import in ``path``, wherever it stands."""
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            module = ".".join(base[:len(base) - node.level + 1] + [node.module or ""]).strip(".") \
                if node.level else node.module or ""
            out.append((node.lineno, module, tuple(a.name for a in node.names)))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name, ()) for a in node.names]
    return out


def import_graph() -> dict[str, dict[str, int]]:
    """Each vs_uav / vs_uav_gui module -> {the project's modules it imports: the line}."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        deps = {}
        for line, module, names in _imports(name, path):
            for target in (module, *(f"{module}.{n}" for n in names)):
                if target in modules and target != name:
                    deps.setdefault(target, line)
        graph[name] = deps
    return graph


def layer_of(module: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no layer: add it to tests/test_layers.py LAYERS")


def test_every_module_is_in_a_layer_and_imports_only_from_below():
    modules, wrong = _modules(), []
    for name, path in modules.items():
        if name == "vs_uav":
            continue  # the package's lazy public names, the top of every layer
        mine = layer_of(name)
        for line, module, names in _imports(name, path):
            if module == "vs_uav":
                if set(names) - PACKAGE_NAMES:
                    wrong.append(f"{path.relative_to(REPO)}:{line}: {name} imports {sorted(names)} from vs_uav")
                continue
            if (module.startswith("vs_uav.") or module.startswith("vs_uav_gui")) and layer_of(module) > mine:
                wrong.append(f"{path.relative_to(REPO)}:{line}: {name} (layer {LAYERS[mine][0]}) imports {module} "
                             f"(layer {LAYERS[layer_of(module)][0]}, above it)")
            for prefix, banned in FORBIDDEN.items():
                if (name == prefix or name.startswith(prefix + ".")) and module.split(".")[0] in banned:
                    wrong.append(f"{path.relative_to(REPO)}:{line}: {name} imports {module}, which {prefix} must not")
    assert not wrong, "\n".join(wrong)


def _cycle(graph: dict[str, dict[str, int]]) -> list[str]:
    """One import cycle as its modules in order, or []."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> list[str]:
        state[m] = 1
        for d in sorted(graph.get(m, {})):
            if state.get(d) == 1:
                return path[path.index(d):] + [m, d] if d in path else [m, d]
            if d not in state:
                found = visit(d, path + [m])
                if found:
                    return found
        state[m] = 2
        return []

    for m in sorted(graph):
        if m not in state:
            found = visit(m, [])
            if found:
                return found
    return []


def test_no_module_reaches_itself_through_imports():
    graph = {m: deps for m, deps in import_graph().items() if m != "vs_uav"}
    assert {"vs_uav.engine.pipeline", "vs_uav.engine.driver", "vs_uav.core.models.raft"} <= graph.keys()
    assert _cycle(graph) == [], " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_cycles_through_type_checking_imports(tmp_path):
    # The check above must be able to fail: a TYPE_CHECKING import back is a cycle.
    cycle = _cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}})
    assert cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"}
    assert _cycle({"a": {"b": 1}, "b": {"c": 1}, "d": {"a": 1}}) == []
    module = tmp_path / "m.py"
    module.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from vs_uav.engine import pipeline\n")
    assert [m for _, m, _ in _imports("vs_uav.engine.driver", module)] == ["typing", "vs_uav.engine"]


def test_the_model_code_imports_only_model_code():
    for name, deps in import_graph().items():
        if name.startswith("vs_uav.core.models."):
            assert all(d.startswith("vs_uav.core.models") or d == "vs_uav.errors" for d in deps), (name, deps)


@pytest.mark.parametrize("golden", sorted((REPO / "tests" / "golden").glob("*.vpy")), ids=lambda p: p.stem)
def test_generated_scripts_use_only_the_public_names(golden):
    import vs_uav

    text = golden.read_text(encoding="utf-8")
    used = set(re.findall(r"\bvs_uav\.([A-Za-z_][\w.]*)", text))
    assert used <= set(vs_uav.__all__), used
    assert not re.search(r"^\s*(from|import) vs_uav\.", text, re.M)
    for name in used:
        assert callable(getattr(vs_uav, name))
