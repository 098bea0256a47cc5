#!/usr/bin/env python
"""Compile every CUDA kernel bpgpu's CuPy path can build, with NVRTC, on a machine without a GPU.

    python ci/compile_cuda.py                 # every builder x variant x layout, sm_80 and sm_90
    python ci/compile_cuda.py --arch 80 86 90 # other architectures
    python ci/compile_cuda.py --self-test     # prove the check fails on broken kernels

What it does:

1. Scans bpgpu/ (AST) for CuPy kernel constructors (ElementwiseKernel, ReductionKernel,
   RawKernel, RawModule, cupy.fuse, cupyx.jit...) and fails when one sits in a function that
   ci/kernel_variants.py does not list, or when a listed builder has a parameter without a
   domain: a new kernel cannot slip past.
2. Calls every builder with every reachable argument tuple (real CuPy objects; building one
   compiles nothing). For ElementwiseKernel and ReductionKernel the full source is what CuPy's
   own generators in ``cupy._core`` produce for the argument layout of the call site (which
   parameters are arrays or scalars, their ranks, 32- or 64-bit indexing), behind CuPy's
   headers; for RawKernel its code.
3. Compiles with ``cupy.cuda.nvrtc``-level calls (createProgram / compileProgram / getCUBIN;
   CuPy's ``compile_using_nvrtc`` would ask a device for its architecture) with the options CuPy
   itself uses (``assemble_cupy_compiler_options`` plus ``-ftz=true``, ``-arch=sm_XX`` and
   ``--device-as-default-execution-space``), and checks that each cubin's ELF symbol table holds
   the kernel's entry point.

Exit status: 0 when everything compiles, 1 on any failure, 2 when CuPy cannot be imported.
CuPy and NVRTC come from a separate environment (ci/cuda_venv.sh), never the test environment;
run without CuPy importable, this script re-runs itself with that environment's Python.
"""

import argparse
import ast
import concurrent.futures
import inspect
import os
import struct
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = ROOT / ".cuda-venv" / "bin" / "python"
sys.path.insert(0, str(ROOT / "ci"))
sys.path.insert(0, str(ROOT))

import kernel_variants  # noqa: E402  (ci/ is not a package)

#: Names that construct a CuPy kernel when called (or used as a decorator).
CONSTRUCTORS = {"ElementwiseKernel", "ReductionKernel", "RawKernel", "RawModule", "fuse",
                "rawkernel", "create_ufunc", "create_reduction_func"}
ARCHS = ("80", "90")
ARRAY, INDEXER, SCALAR = 1, 2, 3          # cupy._core._kernel._ArgInfo kinds
REDUCTION_BLOCK = 512                     # CuPy's default block size for reductions


# -- 1. what the source constructs ------------------------------------------------------------------
def constructor_sites(source, filename):
    """[(function name or None, line)] of every kernel constructor call or decorator."""
    tree = ast.parse(source, filename)
    sites = []

    def visit(node, function):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for decorator in node.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                if _name_of(target) in CONSTRUCTORS:
                    sites.append((node.name, decorator.lineno))
            function = node.name
        if isinstance(node, ast.Call) and _name_of(node.func) in CONSTRUCTORS:
            sites.append((function, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, None)
    return sorted(set(sites))  # a decorator call is seen both as decorator and as call


def _name_of(node):
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return None


def coverage_errors(table, package=ROOT / "bpgpu", modules=None):
    """Messages for constructors outside listed builders and for builders whose parameters
    and domains differ."""
    errors = []
    for path in sorted(package.rglob("*.py")):
        for function, line in constructor_sites(path.read_text(), str(path)):
            if (path.stem.removeprefix("_"), function) not in table:
                where = f"{path.relative_to(package.parent)}:{line}"
                errors.append(f"{where}: a CuPy kernel constructed in "
                              f"{function or 'module scope'} is not listed in "
                              "ci/kernel_variants.py, so nothing compiles or tests it")
    for (module, builder), spec in table.items():
        if modules is None:
            break
        function = getattr(modules[module], builder, None)
        if function is None:
            errors.append(f"ci/kernel_variants.py lists {module}.{builder}, which does not exist")
            continue
        params = list(inspect.signature(function).parameters)
        if sorted(params) != sorted(spec["domains"]):
            errors.append(f"{module}.{builder}{tuple(params)}: ci/kernel_variants.py gives "
                          f"domains for {tuple(spec['domains'])}")
    return errors


# -- 2. full sources ---------------------------------------------------------------------------------
class Unit:
    """One NVRTC program: source, the entry points it must define, what it is for the report."""

    def __init__(self, label, source, entries, options=()):
        self.label, self.source, self.entries, self.options = label, source, entries, options


def _cupy_parts():
    import cupy
    import numpy as np
    from cupy._core import _carray, _kernel, _reduction, core

    header = "".join(f"#include <{h}>\n" for h in core._cupy_header_list)
    return cupy, np, _carray, _kernel, _reduction, core, header


def _arginfo(kernel_mod, cupy, np, kind, dtype, ndim, contiguous, index32):
    if kind == SCALAR:
        scalar_type = int if np.dtype(dtype).kind in "iu" else float
        return kernel_mod._ArgInfo(SCALAR, scalar_type, np.dtype(dtype), 0, True, True)
    return kernel_mod._ArgInfo(ARRAY, cupy.ndarray, np.dtype(dtype), ndim, contiguous, index32)


def elementwise_source(kernel, spec, ndim, index32, scalars_as_arrays=False):
    """CuPy's generated code for ``kernel`` called with the layout ``spec`` describes (with
    ``scalars_as_arrays``, the scalars passed as broadcast 0-d device arrays)."""
    cupy, np, _carray, kmod, _red, _core, _header = _cupy_parts()
    infos = []
    for param in kernel.params:
        if param.name == "_ind":
            infos.append(kmod._ArgInfo(INDEXER, _carray.Indexer, None, ndim, True, index32))
        elif param.name in spec.get("scalars", ()) and not scalars_as_arrays:
            infos.append(_arginfo(kmod, cupy, np, SCALAR, param.dtype, 0, True, True))
        else:
            contiguous = param.name not in spec.get("broadcast", ()) and \
                param.name not in spec.get("scalars", ())
            infos.append(_arginfo(kmod, cupy, np, ARRAY, param.dtype, ndim, contiguous, index32))
    return kmod._get_elementwise_kernel_code(tuple(infos), kmod._TypeMap(()), kernel.params,
                                             kernel.operation, kernel.name, kernel.preamble,
                                             **kernel.kwargs)


def reduction_source(kernel, spec, ndim, index32, scalars_as_arrays=False):
    """CuPy's generated code for a full reduction of ``ndim``-d inputs into a 0-d output."""
    cupy, np, _carray, kmod, rmod, _core, _header = _cupy_parts()
    infos = []
    for param in kernel._params:
        if param.name == "_in_ind":
            infos.append(kmod._ArgInfo(INDEXER, _carray.Indexer, None, ndim, True, index32))
        elif param.name == "_out_ind":
            infos.append(kmod._ArgInfo(INDEXER, _carray.Indexer, None, 0, True, index32))
        elif param.name == "_block_stride":
            infos.append(_arginfo(kmod, cupy, np, SCALAR, "int32", 0, True, True))
        elif param.name in spec.get("scalars", ()) and not scalars_as_arrays:
            infos.append(_arginfo(kmod, cupy, np, SCALAR, param.dtype, 0, True, True))
        elif param.name in spec.get("scalars", ()):
            infos.append(_arginfo(kmod, cupy, np, ARRAY, param.dtype, ndim, False, index32))
        elif any(param is p for p in kernel.out_params):
            infos.append(_arginfo(kmod, cupy, np, ARRAY, param.dtype, 0, True, index32))
        else:
            infos.append(_arginfo(kmod, cupy, np, ARRAY, param.dtype, ndim, True, index32))
    # CuPy's reduction code indexes with IndexT, which its type map defines per call.
    index_type = kmod._TypeMap((("IndexT", np.dtype("int32" if index32 else "int64")),))
    return rmod._ReductionKernel_get_cached_function_code(
        kernel.nin, kernel.nout, kernel._params, tuple(infos), index_type, kernel.name,
        REDUCTION_BLOCK, kernel.reduce_type, kernel.identity, kernel.map_expr,
        kernel.reduce_expr, kernel.post_map_expr, kernel.preamble, kernel.options)


def units_for(table, modules):
    """Every NVRTC program to compile: elementwise kernels grouped per layout (their names are
    unique within one), reductions and raw kernels one program each. Returns (units, count)."""
    cupy, *_rest, header = _cupy_parts()
    groups, units, count = {}, [], 0
    for (module, builder), spec in table.items():
        build = getattr(modules[module], builder)
        order = list(inspect.signature(build).parameters)
        for kwargs in kernel_variants.variants(spec):
            for kernel in kernel_variants.kernels_of(build(*[kwargs[p] for p in order])):
                count += 1
                label = f"{module}.{builder}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
                units.extend(_kernel_units(cupy, header, kernel, spec, label, groups))
    for (ndim, index32, as_arrays, options), members in groups.items():
        source = header + "\n".join(code for _, code, _ in members)
        units.append(Unit(f"{len(members)} elementwise kernels, "
                          f"{_layout_name(ndim, index32, as_arrays)}", source,
                          [name for name, _, _ in members], options))
        units[-1].members = members
    return units, count


def _kernel_units(cupy, header, kernel, spec, label, groups):
    layouts = [(ndim, index32, as_arrays) for ndim in spec.get("ndims", (1,))
               for index32 in (True, False)
               for as_arrays in ((False, True) if spec.get("device_scalars") else (False,))]
    if isinstance(kernel, cupy.ElementwiseKernel):
        options = tuple(kernel.kwargs.get("options", ()))
        for ndim, index32, as_arrays in layouts:
            code = elementwise_source(kernel, spec, ndim, index32, as_arrays)
            groups.setdefault((ndim, index32, as_arrays, options), []).append(
                (kernel.name, code, label))
        return []
    if isinstance(kernel, cupy.ReductionKernel):
        return [Unit(f"{label} [{_layout_name(ndim, index32, as_arrays)}]",
                     header + reduction_source(kernel, spec, ndim, index32, as_arrays),
                     [kernel.name], tuple(kernel.options))
                for ndim, index32, as_arrays in layouts]
    if isinstance(kernel, cupy.RawKernel):
        return [Unit(label, kernel.code, [kernel.name], tuple(kernel.options))]
    raise TypeError(f"{label}: built a {type(kernel).__name__}, which this check cannot compile")


def _layout_name(ndim, index32, scalars_as_arrays):
    return (f"{ndim}-d, {'32' if index32 else '64'}-bit indices"
            + (", scalars as device arrays" if scalars_as_arrays else ""))


# -- 3. compiling and checking ------------------------------------------------------------------------
def nvrtc_options(extra, arch):
    from cupy._core import core

    return core.assemble_cupy_compiler_options(tuple(extra)) + (
        "-ftz=true", f"-arch=sm_{arch}", "--device-as-default-execution-space")


def compile_unit(source, entries, options, arch):
    """None when the program compiles for sm_``arch`` and its cubin defines every entry point,
    else the error text."""
    from cupy_backends.cuda.libs import nvrtc

    program = nvrtc.createProgram(source, "kern.cu", (), ())
    try:
        try:
            nvrtc.compileProgram(program, nvrtc_options(options, arch))
        except nvrtc.NVRTCError as exc:
            return f"NVRTC: {exc}\n{nvrtc.getProgramLog(program)}"
        cubin = nvrtc.getCUBIN(program)
    finally:
        nvrtc.destroyProgram(program)
    defined = elf_functions(cubin)
    missing = [name for name in entries if name not in defined]
    if missing:
        return f"compiled, but the cubin has no entry point {', '.join(missing)}"
    return None


def elf_functions(blob):
    """Names of the function symbols in an ELF64 little-endian object (a cubin)."""
    if blob[:4] != b"\x7fELF" or blob[4] != 2 or blob[5] != 1:
        raise ValueError("not an ELF64 little-endian object")
    shoff, = struct.unpack_from("<Q", blob, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", blob, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", blob, shoff + i * shentsize)
                for i in range(shnum)]
    names = set()
    for _name, kind, _flags, _addr, offset, size, link, _info, _align, entsize in sections:
        if kind != 2:  # SHT_SYMTAB
            continue
        strtab = sections[link]
        str_offset = strtab[4]
        for k in range(size // (entsize or 24)):
            st_name, st_info = struct.unpack_from("<IB", blob, offset + k * (entsize or 24))
            if st_info & 0xF == 2:  # STT_FUNC
                end = blob.index(b"\0", str_offset + st_name)
                names.add(blob[str_offset + st_name:end].decode())
    return names


def _job(args):
    index, source, entries, options, arch = args
    return index, arch, compile_unit(source, entries, options, arch)


def compile_all(units, archs, workers):
    """[(label, arch, error)] of the failures; a failing group is retried kernel by kernel so the
    report names the kernel."""
    jobs = [(i, u.source, u.entries, u.options, arch) for i, u in enumerate(units) for arch in archs]
    failures = []
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
        for index, arch, error in pool.map(_job, jobs):
            if error is None:
                continue
            unit = units[index]
            members = getattr(unit, "members", None)
            if not members:
                failures.append((unit.label, arch, error))
                continue
            header = _cupy_parts()[-1]
            for name, code, label in members:
                single = compile_unit(header + code, [name], unit.options, arch)
                if single is not None:
                    failures.append((label, arch, single))
    return failures


def run_check(archs, workers, table=None, modules=None, package=ROOT / "bpgpu", quiet=False):
    """Scan, build and compile; the list of failure messages (empty: all good)."""
    if modules is None:
        modules = bpgpu_modules()
    table = kernel_variants.builders(modules) if table is None else table
    errors = coverage_errors(table, package, modules)
    units, count = units_for(table, modules)
    start = time.perf_counter()
    failures = compile_all(units, archs, workers)
    if not quiet:
        print(f"compiled {count} kernels ({len(units)} NVRTC programs, every layout) for "
              f"{', '.join('sm_' + a for a in archs)} in {time.perf_counter() - start:.1f} s; "
              f"{len(failures)} failures")
    errors += [f"{label} [sm_{arch}]: {error.strip()[:2000]}" for label, arch, error in failures]
    return errors


def bpgpu_modules():
    from bpgpu.kernels import _cupy_fused, _cupy_random

    return {"cupy_fused": _cupy_fused, "cupy_random": _cupy_random}


# -- self-test: the check fails when it should ------------------------------------------------------
def self_test(archs, workers):
    """Break things on purpose and require the check to report each. Returns failure messages."""
    import cupy

    modules = bpgpu_modules()
    problems = []
    broken = {
        ("selftest", "_undefined_name"): cupy.ElementwiseKernel(
            "float32 x", "float32 y", "y = x * not_declared", "bpgpu_selftest_undefined"),
        ("selftest", "_wrong_entry"): cupy.RawKernel(
            'extern "C" __global__ void bpgpu_selftest_other(float* x) { x[0] = 1.0f; }',
            "bpgpu_selftest_declared"),
        ("selftest", "_bad_reduction"): cupy.ReductionKernel(
            "float32 x", "float32 y", "x", "a +* b", "y = a", "0", "bpgpu_selftest_reduce"),
    }
    table = {key: {"domains": {}, "ndims": (1,)} for key in broken}
    fake_modules = {"selftest": types.SimpleNamespace(
        **{name: _returning(kernel) for (_, name), kernel in broken.items()})}
    units, _ = units_for(table, fake_modules)
    failures = compile_all(units, archs[:1], workers)
    reported = {label for label, _, _ in failures}
    for (_, name), kernel in broken.items():
        if not any(name in label for label in reported):
            problems.append(f"self-test: the broken kernel {kernel.name} was NOT reported")
    if not any("no entry point" in error for _, _, error in failures):
        problems.append("self-test: a cubin lacking its entry point was not reported")
    good_and_bad = [u for u in units if "elementwise" in u.label]
    if good_and_bad and not all(getattr(u, "members", None) for u in good_and_bad):
        problems.append("self-test: grouped elementwise kernels lost their members")
    # A kernel constructor the table does not list is reported by the AST scan.
    sites = constructor_sites("import cupy\n\ndef _sneaky(dtype):\n"
                              "    return cupy.ElementwiseKernel('float32 x', 'float32 y', "
                              "'y = x', 'k')\n\n@cupy.fuse()\ndef _fused(x):\n    return x\n",
                              "selftest.py")
    if sorted(sites) != [("_fused", 6), ("_sneaky", 4)]:
        problems.append(f"self-test: the AST scan found {sites}, expected two sites")
    table = kernel_variants.builders(modules)
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "cupy_extra.py").write_text("import cupy\n\ndef _sneaky():\n"
                                                     "    return cupy.RawKernel('', 'k')\n")
        errors = coverage_errors(table, Path(scratch), None)
    if not any("_sneaky" in e for e in errors):
        problems.append("self-test: an unlisted kernel constructor was not reported")
    if not problems:
        print(f"self-test: {len(broken)} broken kernels reported "
              f"({len(failures)} failures), unlisted constructors reported")
    return problems


def _returning(kernel):
    """A builder without parameters that returns ``kernel``."""
    def build():
        return kernel
    return build


def _ensure_cupy():
    """Import CuPy, re-running this script with the compile environment's Python if needed."""
    try:
        import cupy  # noqa: F401
        from cupy_backends.cuda.libs import nvrtc  # noqa: F401
    except ImportError as exc:
        if VENV_PYTHON.exists() and Path(sys.executable).resolve() != VENV_PYTHON.resolve() \
                and os.environ.get("BPGPU_COMPILE_REEXEC") != "1":
            env = {**os.environ, "BPGPU_COMPILE_REEXEC": "1"}
            sys.exit(subprocess.call([str(VENV_PYTHON), *sys.argv], env=env))
        print(f"compile_cuda: CuPy/NVRTC not importable ({exc}); create the compile environment "
              "with ci/cuda_venv.sh", file=sys.stderr)
        sys.exit(2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=list(ARCHS),
                        help="compute capabilities, e.g. 80 90 (default: %(default)s)")
    parser.add_argument("--self-test", action="store_true",
                        help="check that broken kernels and unlisted constructors are reported")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    _ensure_cupy()
    if args.self_test:
        problems = self_test(args.arch, args.workers)
    else:
        problems = run_check(args.arch, args.workers)
    for problem in problems:
        print("FAIL", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
