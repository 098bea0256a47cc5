"""Everything that needs a GPU, in one call (run through ci/gpu_check.sh; see its header).

Stages, each with its own time limit so the whole fits in 8 minutes on one H200:

1. install the missing pure-Python dependencies from .whl/ (ci/gpu_wheels.txt; no registry);
2. the CuPy half of the test suite with the CuPy backend REQUIRED (``--backend cupy
   --require-backend cupy -k "cupy or cuda or gpu"``: a cupy test that cannot run fails instead
   of skipping), including the GPU-only tests (CUDA graphs on a GPU, two devices when present,
   the asynchronous step);
3. benchmarks/bench_step.py --backend cupy --quick: bpgpu vs PyTorch CUDA eager per step, bpgpu
   with CUDA graphs, fit throughput and GPU memory;
4. benchmarks/bench_mixed.py --backend cupy on the large cases: the fast mixed-precision step
   (float16 kernels, bpgpu/kernels/_mixed_step.py) against the float32 one (issue 15's target:
   mixed / float32 <= 0.5) and the reference mixed step, its table kept as text, with whether
   the mixed contender really ran the fast step (``fast_mixed_step``). The fast mixed step's
   comparisons with the reference on the GPU are in stage 2 (tests/test_precision_gpu.py).

Writes ONE JSON file: ``$OUT/gpu_check.json`` when ``$OUT`` is set, else
benchmarks/results/gpu-check-<date>.json. Targets are reported, not asserted: a step at most
0.7x PyTorch CUDA eager for small networks and 1.0x for large ones, and a CUDA-graph step at
most 0.3x for small ones. Exit status 0 when the tests pass and the benchmark ran.

``--dry-run`` checks, on any machine and without a GPU, that everything the real run needs is
here: the scripts, each dependency importable or its wheel in .whl/, the benchmark's options,
and that pytest collects the selection.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".whl"
REQUIREMENTS = ROOT / "ci" / "gpu_wheels.txt"
BENCH = ROOT / "benchmarks" / "bench_step.py"
BENCH_MIXED = ROOT / "benchmarks" / "bench_mixed.py"
#: Tests that only exercise the CPU emulation: not worth GPU time.
CPU_ONLY_TESTS = ("tests/test_cuda_emulated.py", "tests/test_cuda_compile_check.py")
LIMITS_S = {"tests": 250, "bench": 150, "mixed": 70}  # 470 s with installs: < 8 min
SMALL_CASES = ("2-4-2", "1-64-32-2")
GRAPH_TARGET = 0.3


#: Distributions whose import name is not their name (wheel file names use the distribution's).
IMPORT_NAMES = {"scikit_learn": "sklearn"}


def requirements(path):
    """[(requirement, import name)] from a requirements file."""
    out = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name = re.split(r"[<>=!~ ]", line, maxsplit=1)[0].replace("-", "_").lower()
            out.append((line, IMPORT_NAMES.get(name, name)))
    return out


def importable(module):
    """Whether ``module`` imports here, with the checkout on the path (bpgpu is not installed
    on the GPU host)."""
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}).returncode == 0


def wheel_for(module):
    """A wheel in .whl/ for ``module`` usable by CPython 3.12 on x86-64 Linux, or None."""
    if not WHEELS.is_dir():
        return None
    distribution = {v: k for k, v in IMPORT_NAMES.items()}.get(module, module)
    for wheel in sorted(WHEELS.glob("*.whl")):
        name, _version, *tags = wheel.stem.split("-")
        if name.lower() != distribution:
            continue
        python, abi, plat = tags[-3:]
        if ("py3" in python or "cp312" in python) and (plat == "any" or "x86_64" in plat):
            return wheel
    return None


def pytest_command(junit=None):
    """The CuPy half of the suite: the cupy parametrizations of backend tests and the tests
    about CuPy, CUDA or the GPU (by name); with ``junit``, CuPy required."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--backend", "cupy",
           "-k", "cupy or cuda or gpu", "tests"]
    cmd += [f"--ignore={path}" for path in CPU_ONLY_TESTS]
    if junit:
        cmd += ["--require-backend", "cupy", f"--junitxml={junit}"]
    return cmd


# -- dry run --------------------------------------------------------------------------------------------
def dry_run(requirements_path, collect=True):
    """[(check, ok, detail)] for everything the GPU run needs (``collect``: also let pytest
    collect the test selection, the slowest check)."""
    checks = []
    for path in (BENCH, BENCH_MIXED, REQUIREMENTS, ROOT / "tests" / "conftest.py",
                 ROOT / "ci" / "gpu_check.sh"):
        checks.append((f"file {path.relative_to(ROOT)}", path.exists(), "present"
                       if path.exists() else "missing"))
    for requirement, module in requirements(requirements_path):
        wheel = wheel_for(module)
        if importable(module):
            checks.append((f"dependency {requirement}", True, "importable here; " + (
                f"wheel {wheel.name} for the GPU host" if wheel else
                "NO wheel in .whl/ for a GPU host that lacks it (ci/fetch_gpu_wheels.sh)")))
            continue
        checks.append((f"dependency {requirement}", wheel is not None,
                       f"wheel {wheel.name}" if wheel else
                       "neither importable nor a cp312/py3 x86-64 wheel in .whl/ (run "
                       "ci/fetch_gpu_wheels.sh)"))
    for module in ("numpy", "pytest", "bpgpu"):
        checks.append((f"module {module}", importable(module), "the GPU host must have it"))
    result = subprocess.run([sys.executable, str(BENCH), "--help"], capture_output=True,
                            text=True, cwd=ROOT)
    needed = ("--backend", "--quick", "--out", "--no-import")
    missing = [flag for flag in needed if flag not in result.stdout]
    checks.append(("benchmark options", result.returncode == 0 and not missing,
                   "ok" if not missing else f"bench_step.py lacks {missing}"))
    result = subprocess.run([sys.executable, str(BENCH_MIXED), "--help"], capture_output=True,
                            text=True, cwd=ROOT)
    needed = ("--backend", "--cases", "--rounds", "784-1024-1024-10", "4096x4")
    missing = [flag for flag in needed if flag not in result.stdout]
    checks.append(("mixed-precision benchmark options", result.returncode == 0 and not missing,
                   "ok" if not missing else f"bench_mixed.py lacks {missing}"))
    if collect:
        result = subprocess.run(pytest_command() + ["--collect-only"], capture_output=True,
                                text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        tail = result.stdout.strip().splitlines()[-1:] or [result.stderr.strip()[-300:]]
        checks.append(("pytest collects the CuPy selection", result.returncode == 0, tail[0]))
    checks.append(("GPU, CuPy and PyTorch CUDA", True, "not checked in a dry run"))
    return checks


# -- the real run ---------------------------------------------------------------------------------------
def install_missing(requirements_path):
    installed = []
    for requirement, module in requirements(requirements_path):
        if importable(module):
            continue
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index",
                        "--find-links", str(WHEELS), requirement], check=True)
        installed.append(requirement)
    return installed


def environment():
    info = {"python": platform.python_version(), "platform": platform.platform()}
    if shutil.which("nvidia-smi"):
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True,
                                            text=True).stdout.strip()
    probe = ("import json, cupy, torch; d = cupy.cuda.runtime.getDeviceProperties(0); "
             "print(json.dumps({'cupy': cupy.__version__, 'torch': torch.__version__, "
             "'torch_cuda': torch.version.cuda, 'devices': cupy.cuda.runtime.getDeviceCount(), "
             "'device0': d['name'].decode(), 'cuda_runtime': "
             "cupy.cuda.runtime.runtimeGetVersion()}))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    info["gpu"] = json.loads(result.stdout) if result.returncode == 0 else \
        {"error": result.stderr.strip()[-500:]}
    return info


def run_tests(work):
    junit = work / "junit.xml"
    start = time.perf_counter()
    try:
        result = subprocess.run(pytest_command(junit), capture_output=True, text=True, cwd=ROOT,
                                timeout=LIMITS_S["tests"],
                                env={**os.environ, "PYTHONPATH": str(ROOT),
                                     "BPGPU_REQUIRE_BACKENDS": "cupy"})
        status, tail = result.returncode, result.stdout[-4000:]
    except subprocess.TimeoutExpired as exc:
        status, tail = "timeout", (exc.stdout or b"")[-4000:].decode(errors="replace")
    summary = {"exit_status": status, "seconds": round(time.perf_counter() - start, 1),
               "output_tail": tail}
    if junit.exists():
        root = ET.parse(junit).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        for key in ("tests", "failures", "errors", "skipped"):
            summary[key] = int(suite.get(key, 0))
        summary["failed"] = [f"{case.get('classname')}::{case.get('name')}"
                             for case in suite.iter("testcase")
                             if case.find("failure") is not None or case.find("error") is not None
                             ][:100]
    return summary


def run_bench(work):
    out = work / "bench_step"
    start = time.perf_counter()
    try:
        result = subprocess.run([sys.executable, str(BENCH), "--backend", "cupy", "--quick",
                                 "--no-import", "--out", str(out)], capture_output=True,
                                text=True, cwd=ROOT, timeout=LIMITS_S["bench"],
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        status, tail = result.returncode, result.stdout[-3000:] + result.stderr[-2000:]
    except subprocess.TimeoutExpired:
        status, tail = "timeout", ""
    summary = {"exit_status": status, "seconds": round(time.perf_counter() - start, 1),
               "output_tail": tail}
    path = out.with_suffix(".json")
    if path.exists():
        summary["results"] = json.loads(path.read_text())
        summary["targets"] = targets(summary["results"])
    return summary


def run_mixed():
    """The mixed-precision table on the GPU (bench_mixed.py prints it; no JSON of its own)."""
    start = time.perf_counter()
    try:
        result = subprocess.run([sys.executable, str(BENCH_MIXED), "--backend", "cupy", "--cases",
                                 "784-1024-1024-10", "4096x4", "--rounds", "3"],
                                capture_output=True, text=True, cwd=ROOT,
                                timeout=LIMITS_S["mixed"],
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        status, tail = result.returncode, result.stdout[-3000:] + result.stderr[-1000:]
    except subprocess.TimeoutExpired as exc:
        status, tail = "timeout", (exc.stdout or b"")[-3000:].decode(errors="replace")
    return {"exit_status": status, "seconds": round(time.perf_counter() - start, 1),
            "fast_mixed_step": "mixed_float16 engine: fast: mixed float16" in tail,
            "output_tail": tail}


def targets(results):
    """Each case's ratio against its target, and the CUDA-graph step's for small networks."""
    report = {}
    for name, case in results.get("cases", {}).items():
        times = case.get("times", {})
        entry = {"ratio": case.get("ratio"), "target": case.get("target"), "met": case.get("met")}
        graphs = times.get("bpgpu_cuda_graphs", {}).get("ratio_to_torch")
        if graphs is not None:
            entry["cuda_graphs_ratio"] = graphs
            if name in SMALL_CASES:
                entry["cuda_graphs_target"] = GRAPH_TARGET
                entry["cuda_graphs_met"] = graphs <= GRAPH_TARGET
        report[name] = entry
    return report


def results_path():
    out = os.environ.get("OUT")
    if out:
        return Path(out) / "gpu_check.json"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d-%H%M")
    return ROOT / "benchmarks" / "results" / f"gpu-check-{stamp}.json"


def main(argv=None):
    parser = argparse.ArgumentParser(description="the one prepared GPU check (ci/gpu_check.sh)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check that everything is here, without a GPU")
    parser.add_argument("--wheels", default=str(REQUIREMENTS),
                        help="requirements the GPU host may lack (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.dry_run:
        checks = dry_run(args.wheels)
        for name, ok, detail in checks:
            print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
        failed = [name for name, ok, _ in checks if not ok]
        print("dry run:", "everything the GPU check needs is here" if not failed
              else f"{len(failed)} problem(s)")
        return 1 if failed else 0
    start = time.perf_counter()
    work = ROOT / "out" / "gpu_check"
    work.mkdir(parents=True, exist_ok=True)
    report = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "installed_from_wheels": install_missing(args.wheels),
              "environment": environment()}
    report["tests"] = run_tests(work)
    print("tests:", {k: v for k, v in report["tests"].items() if k != "output_tail"}, flush=True)
    report["benchmark"] = run_bench(work)
    report["mixed_precision"] = run_mixed()
    print(report["mixed_precision"]["output_tail"], flush=True)
    report["seconds"] = round(time.perf_counter() - start, 1)
    path = results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps(report["benchmark"].get("targets", {}), indent=1))
    print(f"wrote {path} ({report['seconds']} s)")
    tests = report["tests"]
    ok = tests["exit_status"] == 0 and report["benchmark"]["exit_status"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
