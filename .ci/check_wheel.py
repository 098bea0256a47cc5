"""Build bpgpu's wheel and prove that it installs, imports and trains in a fresh virtual environment.

    python .ci/check_wheel.py                  # build in an isolated environment (PEP 517)
    python .ci/check_wheel.py --no-isolation   # build with the setuptools already installed

Checks: the wheel holds every subpackage, py.typed, the C kernels' sources and the LICENSE, and no
tests; its metadata carries the version from bpgpu/_version.py and the MIT licence expression; in
a new virtual environment (no system site-packages) pip installs it with its declared
dependencies, and there ``bpgpu`` imports from the wheel, reports that version and trains a small
network, and where a C compiler is on the PATH its C kernels compile and pass their self-check.
Exits 1 with the reason on the first failure.
"""

import argparse
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
import venv
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent

SMOKE_TEST = """
import importlib.metadata, pathlib, shutil, sys
import numpy as np
import bpgpu
from bpgpu.kernels import _c_kernels

version = sys.argv[1]
assert bpgpu.__version__ == importlib.metadata.version("bpgpu") == version, bpgpu.__version__
assert pathlib.Path(bpgpu.__file__).resolve().is_relative_to(pathlib.Path(sys.prefix).resolve()), \\
    f"bpgpu was imported from {bpgpu.__file__}, not from the virtual environment"
X = np.random.default_rng(0).standard_normal((128, 2))
y = (X[:, :1] + X[:, 1:] > 0).astype(float)
net = bpgpu.Network.from_sizes([2, 8, 1], loss="bce_with_logits", backend="numpy", seed=0,
                               optimizer=bpgpu.optimizers.Adam(lr=0.05))
losses = net.fit(X, y, epochs=30, batch_size=32, verbose=0).history["loss"]
assert losses[-1] < 0.5 * losses[0], losses
if any(shutil.which(name) for name in ("cc", "gcc", "clang")):  # the shipped C source compiles
    assert _c_kernels.library() is not None, _c_kernels.support()
print("installed bpgpu", bpgpu.__version__, "trains: loss", round(losses[0], 3), "->",
      round(losses[-1], 3), "; C kernels:", _c_kernels.support())
"""


def fail(message):
    sys.exit(f"check_wheel: {message}")


def run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        fail(f"{' '.join(map(str, command))} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def project_version():
    text = (ROOT / "bpgpu" / "_version.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"$', text, flags=re.M)
    if match is None:
        fail("bpgpu/_version.py does not define __version__ = \"...\"")
    return match.group(1)


def check_contents(wheel, version):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata_name = next((n for n in names if n.endswith(".dist-info/METADATA")), None)
        if metadata_name is None:
            fail(f"{wheel.name} has no METADATA")
        metadata = archive.read(metadata_name).decode()
    required = ["bpgpu/__init__.py", "bpgpu/py.typed", "bpgpu/layers/dense.py",
                "bpgpu/kernels/_cpu_kernels.c", "bpgpu/kernels/_cpu_update.h",
                "bpgpu/kernels/_plan.py", "bpgpu/registry.py"]
    missing = [n for n in required if n not in names]
    if missing:
        fail(f"{wheel.name} lacks {missing}")
    if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
        fail(f"{wheel.name} does not carry the LICENSE file")
    strays = [n for n in names if not n.startswith(("bpgpu/", "bpgpu-"))]
    if strays:
        fail(f"{wheel.name} holds files outside the package: {strays[:5]}")
    for line in (f"Version: {version}", "License-Expression: MIT"):
        if line not in metadata.splitlines():
            fail(f"{wheel.name}'s METADATA lacks the line {line!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-isolation", action="store_true",
                        help="build with the installed setuptools instead of a fresh build env")
    args = parser.parse_args()
    start = time.perf_counter()
    version = project_version()
    with tempfile.TemporaryDirectory(prefix="bpgpu-wheel-") as tmp:
        tmp = pathlib.Path(tmp)
        build = [sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp / "dist"), str(ROOT)]
        run(build + (["--no-isolation"] if args.no_isolation else []))
        wheels = list((tmp / "dist").glob("bpgpu-*.whl"))
        if len(wheels) != 1:
            fail(f"expected one wheel, the build made {[w.name for w in wheels]}")
        check_contents(wheels[0], version)
        venv.create(tmp / "venv", with_pip=True)
        python = tmp / "venv" / "bin" / "python"
        run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheels[0])])
        (tmp / "smoke.py").write_text(SMOKE_TEST, encoding="utf-8")
        # run outside the checkout, so that only the installed copy can be imported, with an
        # empty kernel cache, so that the installed C source is the one compiled
        env = {**os.environ, "BPGPU_CACHE_DIR": str(tmp / "kernel-cache")}
        print(run([python, str(tmp / "smoke.py"), version], cwd=tmp, env=env).strip())
    print(f"check_wheel: {wheels[0].name} builds, installs and imports "
          f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
