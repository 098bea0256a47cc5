"""The landing page's promises: the README keeps the test command CI runs, its first example runs
as written and learns, and it links only to documentation pages that exist."""

import pathlib
import re

import numpy as np

ROOT = pathlib.Path(__file__).parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_keeps_the_test_command_that_ci_runs():
    command = 'pip install -e ".[test]" && python -m pytest'
    assert command in README
    assert command in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_readme_first_example_runs_and_learns(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    example = next(b for b in blocks if "net.fit(" in b)
    namespace = {"__name__": "readme_example"}
    exec(compile(example, "README.md", "exec"), namespace)
    net, X, y = namespace["net"], namespace["X"], namespace["y"]
    accuracy = float(np.mean((net.predict(X)[:, 0] > 0.5) == (y > 0.5)))
    assert accuracy > 0.95  # the classes are split by a line: a 2-4-1 network separates them
    assert namespace["probabilities"].shape == (5, 1)
    assert "accuracy" in capsys.readouterr().out


def test_readme_links_point_at_existing_files():
    targets = re.findall(r"\]\(((?!https?://)[^)#]+)", README)
    assert len(targets) >= 10
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing, f"README links to missing files: {missing}"
