"""``import bpgpu`` stays light: the GPU and torch libraries load only when their backend is asked
for. Checked in a fresh interpreter, since this test session has imported them already."""

import subprocess
import sys

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
