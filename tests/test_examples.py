"""Every example script runs end to end (a few epochs, NumPy backend) and saves its plot."""

import pathlib
import subprocess
import sys

import pytest

EXAMPLES = sorted(p for p in (pathlib.Path(__file__).parent.parent / "examples").glob("*.py")
                  if not p.name.startswith("_"))


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_and_saves_its_plot(script, tmp_path):
    pytest.importorskip("matplotlib", reason="the examples plot with matplotlib (extra 'examples')")
    pytest.importorskip("sklearn", reason="the examples use scikit-learn's data sets")
    done = subprocess.run([sys.executable, str(script), "--backend", "numpy", "--epochs", "3",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "backend: numpy" in done.stdout
    assert list(tmp_path.glob("*.png")), f"{script.name} saved no PNG; output:\n{done.stdout[-2000:]}"
