"""``import bpgpu`` stays light: the GPU and torch libraries load only when their backend is asked
for. Checked in a fresh interpreter, since this test session has imported them already."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest


def _modules_after(code):
    script = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_import_does_not_load_cupy_or_torch():
    modules = _modules_after("import bpgpu")
    assert "bpgpu" in modules and "numpy" in modules
    loaded = sorted(m for m in modules if m.split(".")[0] in ("cupy", "cupyx", "torch"))
    assert loaded == []


def test_numpy_network_does_not_load_cupy_or_torch():
    modules = _modules_after(
        "import bpgpu\n"
        "net = bpgpu.Network.from_sizes([2, 3, 1], backend='numpy', seed=0)\n"
        "net.fit([[0.0, 1.0], [1.0, 0.0]], [0.5, 1.5], epochs=2, verbose=0)")
    assert not {m for m in modules if m.split(".")[0] in ("cupy", "cupyx", "torch")}


def test_torch_backend_loads_torch():
    pytest.importorskip("torch", reason="PyTorch is not installed")
    assert "torch" in _modules_after("import bpgpu\nbpgpu.get_backend('torch')")


# --- the import graph between bpgpu's own modules is acyclic ------------------------------------

_PACKAGE = Path(__file__).resolve().parent.parent / "bpgpu"


def _module_files():
    """``{"bpgpu.layers.dense": path, "bpgpu.layers": .../layers/__init__.py, ...}``."""
    files = {}
    for path in _PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(_PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def _is_type_checking(test):
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _import_nodes(node):
    """Every import statement under ``node``, at module level and inside functions and classes,
    leaving out the bodies of ``if TYPE_CHECKING:`` (which never run)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _import_nodes(ast.Module(body=[other], type_ignores=[]))
        else:
            yield from _import_nodes(child)


def _targets(node, package, modules):
    """The bpgpu modules one import statement loads (a name taken from a package counts as the
    submodule of that name when there is one, as ``from . import io`` is)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name.split(".")[0] == "bpgpu"}
    if node.level:
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if source.split(".")[0] != "bpgpu":
        return set()
    return {f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
            for alias in node.names}


def _import_graph():
    modules = _module_files()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[name] = set()
        for node in _import_nodes(tree):
            graph[name] |= {t for t in _targets(node, package, modules) if t != name}
        unknown = graph[name] - set(modules)
        assert not unknown, f"{name} imports modules that do not exist: {sorted(unknown)}"
    return graph


def _find_cycle(graph):
    """One cycle as a list of modules (first == last), or None; depth-first search."""
    state, stack = {}, []

    def visit(name):
        state[name] = "open"
        stack.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[name] = "done"
        return None

    for name in sorted(graph):
        if name not in state:
            found = visit(name)
            if found:
                return found
    return None


def test_find_cycle_finds_one():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_import_graph_sees_function_level_imports():
    graph = _import_graph()
    assert "bpgpu.network" in graph["bpgpu"]
    assert len(graph) > 30


def test_internal_import_graph_is_acyclic():
    """Each module imports only from modules below it, at module level and inside functions
    alike (a function-level import that only dodges a cycle still is one)."""
    cycle = _find_cycle(_import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
