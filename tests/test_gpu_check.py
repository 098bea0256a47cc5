"""ci/gpu_check.py, the one prepared GPU check: its dry run finds what a GPU host would lack,
and its report compares the benchmark with the targets. (.ci/run runs the whole dry run.)"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ci"))
import gpu_check  # noqa: E402


def test_dry_run_reports_a_dependency_that_is_neither_importable_nor_a_wheel(tmp_path):
    wheels = tmp_path / "wheels.txt"
    wheels.write_text("# comment\nthreadpoolctl>=3.1\nbpgpu-no-such-package>=1  # missing\n")
    assert gpu_check.requirements(wheels) == [("threadpoolctl>=3.1", "threadpoolctl"),
                                              ("bpgpu-no-such-package>=1",
                                               "bpgpu_no_such_package")]
    checks = {name: (ok, detail) for name, ok, detail in gpu_check.dry_run(wheels, collect=False)}
    assert checks["dependency threadpoolctl>=3.1"][0] is True
    ok, detail = checks["dependency bpgpu-no-such-package>=1"]
    assert ok is False and "ci/fetch_gpu_wheels.sh" in detail
    assert checks["benchmark options"][0] is True


def test_a_wheel_counts_only_for_python_312_on_x86_64(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "WHEELS", tmp_path)
    for name in ("pkg_a-1.0-py3-none-any.whl", "pkg_b-1.0-cp311-cp311-manylinux_2_17_x86_64.whl",
                 "pkg_c-1.0-cp312-cp312-manylinux_2_17_aarch64.whl",
                 "pkg_d-1.0-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"):
        (tmp_path / name).write_bytes(b"")
    found = {m: gpu_check.wheel_for(m) is not None for m in ("pkg_a", "pkg_b", "pkg_c", "pkg_d")}
    assert found == {"pkg_a": True, "pkg_b": False, "pkg_c": False, "pkg_d": True}


def test_targets_compare_each_case_and_the_graph_step():
    results = {"cases": {
        "2-4-2": {"ratio": 0.9, "target": 0.7, "met": False,
                  "times": {"bpgpu_cuda_graphs": {"ratio_to_torch": 0.25}}},
        "784-1024-1024-10": {"ratio": 0.8, "target": 1.0, "met": True,
                             "times": {"bpgpu_cuda_graphs": {"ratio_to_torch": 0.7}}}}}
    report = gpu_check.targets(results)
    assert report["2-4-2"] == {"ratio": 0.9, "target": 0.7, "met": False,
                               "cuda_graphs_ratio": 0.25, "cuda_graphs_target": 0.3,
                               "cuda_graphs_met": True}
    assert "cuda_graphs_target" not in report["784-1024-1024-10"]


def test_the_gpu_run_requires_cupy_and_skips_cpu_only_tests():
    cmd = gpu_check.pytest_command("junit.xml")
    assert cmd[cmd.index("--require-backend") + 1] == "cupy"
    assert cmd[cmd.index("--backend") + 1] == "cupy"
    assert cmd[cmd.index("-k") + 1] == "cupy or cuda or gpu"
    assert "--ignore=tests/test_cuda_emulated.py" in cmd


def test_a_distribution_imported_under_another_name(tmp_path, monkeypatch):
    """scikit-learn imports as sklearn; its wheel is found under the distribution's name."""
    wheels = tmp_path / "wheels.txt"
    wheels.write_text("scikit-learn>=1.6\n")
    assert gpu_check.requirements(wheels) == [("scikit-learn>=1.6", "sklearn")]
    monkeypatch.setattr(gpu_check, "WHEELS", tmp_path)
    assert gpu_check.wheel_for("sklearn") is None
    (tmp_path / "scikit_learn-1.7.2-cp312-cp312-manylinux2014_x86_64.whl").write_bytes(b"")
    assert gpu_check.wheel_for("sklearn") is not None
