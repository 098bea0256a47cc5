"""ci/compile_cuda.py: the NVRTC compile check of every CUDA kernel, and its ability to fail.

The parts that need no CUDA toolkit run everywhere: the AST scan finds every kernel constructor
in bpgpu/ inside a builder that ci/kernel_variants.py lists (with a domain for each builder
parameter), and a constructor the table misses is reported. The compile itself needs CuPy and
NVRTC from the separate environment .cuda-venv (ci/cuda_venv.sh); .ci/run creates it and runs
``ci/compile_cuda.py`` and ``--self-test``, and the test below runs the self-test when it exists.
"""

import subprocess
import sys
from pathlib import Path

import pytest
from cuda_emu.backend import EmulatedCuPy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ci"))
import compile_cuda  # noqa: E402
import kernel_variants  # noqa: E402


@pytest.fixture(scope="module")
def modules():
    return EmulatedCuPy().modules


def test_every_kernel_constructor_in_bpgpu_is_listed(modules):
    table = kernel_variants.builders(modules)
    assert compile_cuda.coverage_errors(table, ROOT / "bpgpu", modules) == []
    found = {(path.stem.removeprefix("_"), function) for path in (ROOT / "bpgpu").rglob("*.py")
             for function, _ in compile_cuda.constructor_sites(path.read_text(), str(path))}
    assert found == set(table)


def test_an_unlisted_constructor_and_a_missing_domain_are_reported(modules, tmp_path):
    (tmp_path / "cupy_new.py").write_text(
        "import cupy\n\n\ndef _new_kernel(dtype):\n"
        "    return cupy.ReductionKernel('float32 x', 'float32 y', 'x', 'a + b', 'y = a', '0', 'k')\n"
        "\n\n@cupy.fuse()\ndef _fused(x):\n    return x\n")
    table = kernel_variants.builders(modules)
    errors = compile_cuda.coverage_errors(table, tmp_path, None)
    assert len(errors) == 2
    assert any("_new_kernel" in e for e in errors) and any("_fused" in e for e in errors)
    spec = table[("cupy_fused", "_sgd_kernel")]
    del spec["domains"]["nesterov"]
    errors = compile_cuda.coverage_errors(table, tmp_path / "empty", modules)
    assert len(errors) == 1 and "_sgd_kernel" in errors[0] and "nesterov" in errors[0]


def test_variants_follow_the_reachability_rules(modules):
    spec = kernel_variants.builders(modules)[("cupy_fused", "_sgd_kernel")]
    combos = list(kernel_variants.variants(spec))
    assert len(combos) == 2 * 2 ** 5 - 2 * 2 ** 3  # nesterov needs momentum
    assert all(v["momentum"] for v in combos if v["nesterov"])


def test_elf_symbol_reader_on_a_host_object(tmp_path):
    """The cubin check reads ELF symbol tables; a g++ object file is an ELF64 too."""
    source = tmp_path / "f.cpp"
    source.write_text('extern "C" void bpgpu_probe_entry(float* x) { x[0] = 1.0f; }\n'
                      'extern "C" int bpgpu_probe_data = 3;\n')
    obj = tmp_path / "f.o"
    subprocess.run(["g++", "-c", str(source), "-o", str(obj)], check=True)
    names = compile_cuda.elf_functions(obj.read_bytes())
    assert "bpgpu_probe_entry" in names and "bpgpu_probe_data" not in names
    with pytest.raises(ValueError, match="ELF64"):
        compile_cuda.elf_functions(b"not an elf")


def test_the_compile_check_reports_broken_kernels():
    """Needs the NVRTC environment; .ci/run always creates it and runs this self-test too."""
    if not compile_cuda.VENV_PYTHON.exists():
        pytest.skip("the NVRTC compile environment .cuda-venv is absent (ci/cuda_venv.sh makes "
                    "it; .ci/run creates it and runs ci/compile_cuda.py --self-test)")
    result = subprocess.run([str(compile_cuda.VENV_PYTHON), str(ROOT / "ci" / "compile_cuda.py"),
                             "--self-test", "--arch", "80"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 broken kernels reported" in result.stdout
