"""bpgpu.sklearn against scikit-learn's own MLPs: cross-validated score and time.

    python benchmarks/bench_sklearn.py            # 3 rounds, ~5 minutes on 2 quiet cores
    python benchmarks/bench_sklearn.py --quick    # 1 round, max_iter 50
    python benchmarks/bench_sklearn.py --datasets breast_cancer friedman1 --rounds 5

Data sets bundled with scikit-learn: digits (1797 x 64, 10 classes), breast cancer (569 x 30,
2 classes) and make_friedman1 (2000 x 10, regression, noise 1). Each contender is a Pipeline
(StandardScaler, MLP) with the same architecture and settings: hidden_layer_sizes=(100,),
relu, adam, learning_rate_init 1e-3, batch_size "auto" (200), max_iter 200, tol 1e-4,
n_iter_no_change 10; cross-validated with the same 5 folds (stratified for the classifiers,
shuffled with seed 0), n_jobs=1. Round r uses random_state=r for every contender, so the rounds
also sample the initial weights and batch orders. Scores: accuracy for the classifiers, R^2 for
the regression; per round the mean over folds, reported as the mean (and spread) over rounds.
Paired: per round, a contender's score minus scikit-learn's (same folds, same random_state);
the mean of those differences with its standard error (std / sqrt(rounds)). bpgpu draws its
initial weights and batch orders from other random streams than scikit-learn, so the pairs
share the folds, not the draws. Epochs: the mean ``n_iter_`` over rounds and folds, and the
share of fits that stopped on ``tol`` before ``max_iter``.

Contenders: scikit-learn's ``MLPClassifier``/``MLPRegressor``; bpgpu's with its defaults
(dtype follows X: float64 here, backend "auto"); bpgpu with dtype="float32".

Time: each round runs every contender's whole cross-validation once, in an order that rotates
every round; a contender's time is the median over rounds, and its ratio the median over rounds
of (its time / scikit-learn's time in the same round), so a machine whose speed drifts (a shared
VM) affects both sides of a ratio alike. The load average before and after is recorded.

Writes benchmarks/results/sklearn-<date>.json and .md unless --no-save.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import sklearn  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_digits, make_friedman1  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import KFold, StratifiedKFold  # noqa: E402
from sklearn.model_selection import cross_validate as sk_cross_validate  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkRegressor  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import bpgpu  # noqa: E402
from bpgpu.sklearn import MLPClassifier, MLPRegressor  # noqa: E402


def datasets():
    X_f, y_f = make_friedman1(n_samples=2000, noise=1.0, random_state=0)
    return {
        "digits": (*load_digits(return_X_y=True), "classification"),
        "breast_cancer": (*load_breast_cancer(return_X_y=True), "classification"),
        "friedman1": (X_f, y_f, "regression"),
    }


def contenders(task, max_iter, random_state):
    common = dict(hidden_layer_sizes=(100,), activation="relu", solver="adam",
                  learning_rate_init=1e-3, batch_size="auto", max_iter=max_iter, tol=1e-4,
                  n_iter_no_change=10, random_state=random_state)
    sk, ours = (SkClassifier, MLPClassifier) if task == "classification" else \
        (SkRegressor, MLPRegressor)
    return {
        "scikit-learn": make_pipeline(StandardScaler(), sk(**common)),
        "bpgpu": make_pipeline(StandardScaler(), ours(**common)),
        "bpgpu float32": make_pipeline(StandardScaler(), ours(dtype="float32", **common)),
    }


def cross_validate(model, X, y, task):
    folds = (StratifiedKFold if task == "classification" else KFold)(5, shuffle=True,
                                                                     random_state=0)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = sk_cross_validate(model, X, y, cv=folds, n_jobs=1, return_estimator=True)
    seconds = time.perf_counter() - start
    epochs = [int(pipe[-1].n_iter_) for pipe in result["estimator"]]
    return seconds, result["test_score"], epochs


def run(rounds, max_iter, only=None):
    results = {}
    for name, (X, y, task) in datasets().items():
        if only and name not in only:
            continue
        names = list(contenders(task, max_iter, 0))
        times = {n: [] for n in names}
        ratios = {n: [] for n in names}
        round_scores = {n: [] for n in names}  # per round: the mean over folds
        epochs = {n: [] for n in names}  # n_iter_ of every fit
        for r in range(rounds):
            models = contenders(task, max_iter, random_state=r)
            order = names[r % len(names):] + names[:r % len(names)]
            round_times = {}
            for n in order:
                seconds, fold_scores, fold_epochs = cross_validate(models[n], X, y, task)
                round_times[n] = seconds
                round_scores[n].append(float(np.mean(fold_scores)))
                epochs[n] += fold_epochs
            for n in names:
                times[n].append(round_times[n])
                ratios[n].append(round_times[n] / round_times["scikit-learn"])
        results[name] = {
            "task": task, "n_samples": int(X.shape[0]), "n_features": int(X.shape[1]),
            "metric": "accuracy" if task == "classification" else "r2",
            "contenders": {n: {"score_mean": float(np.mean(round_scores[n])),
                               "score_std": float(np.std(round_scores[n])),
                               "round_scores": round_scores[n],
                               "time_median_s": statistics.median(times[n]),
                               "times_s": times[n],
                               "time_ratio_vs_sklearn": statistics.median(ratios[n]),
                               **paired(round_scores[n], round_scores["scikit-learn"]),
                               "n_iter_mean": float(np.mean(epochs[n])),
                               "stopped_on_tol": float(np.mean(np.array(epochs[n]) < max_iter))}
                           for n in names},
        }
        line = ", ".join(f"{n}: {np.mean(round_scores[n]):.4f} in {statistics.median(times[n]):.2f} s "
                         f"(x{statistics.median(ratios[n]):.2f})" for n in names)
        print(f"{name}: {line}", flush=True)
    return results


def paired(scores, reference):
    """Mean and standard error of the per-round differences ``scores - reference``."""
    d = np.asarray(scores) - np.asarray(reference)
    se = float(np.std(d, ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("nan")
    return {"paired_diff_mean": float(np.mean(d)), "paired_diff_se": se}


def markdown(report):
    lines = [f"# bpgpu.sklearn vs scikit-learn ({report['date']})", "",
             f"{report['machine']}; load average before {report['load_before']}, after "
             f"{report['load_after']}; {report['rounds']} rounds; max_iter {report['max_iter']}.",
             "", "| data set | contender | score (mean +- std over rounds) | minus scikit-learn's, "
             "paired (mean +- s.e.) | epochs (mean n_iter_) | stopped on tol | CV time (median) | "
             "time / scikit-learn |", "|---|---|---|---|---:|---:|---:|---:|"]
    for name, data in report["results"].items():
        for who, c in data["contenders"].items():
            diff = "-" if who == "scikit-learn" else \
                f"{c['paired_diff_mean']:+.4f} +- {c['paired_diff_se']:.4f}"
            lines.append(f"| {name} | {who} | {data['metric']} {c['score_mean']:.4f} +- "
                         f"{c['score_std']:.4f} | {diff} | {c['n_iter_mean']:.1f} | "
                         f"{c['stopped_on_tol']:.0%} | {c['time_median_s']:.2f} s | "
                         f"{c['time_ratio_vs_sklearn']:.2f} |")
    if report.get("note"):
        lines += ["", report["note"]]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, max_iter 50")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--note", default="", help="a remark stored with the results")
    parser.add_argument("--datasets", nargs="+", choices=list(datasets()), default=None,
                        help="run only these data sets")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    max_iter = 50 if args.quick else 200
    load_before = os.getloadavg()
    results = run(rounds, max_iter, args.datasets)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                   f"Python {platform.python_version()}, numpy {np.__version__}, scikit-learn "
                   f"{sklearn.__version__}, bpgpu {bpgpu.__version__}",
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "rounds": rounds, "max_iter": max_iter, "note": args.note, "results": results,
    }
    if not args.no_save:
        stem = os.path.join(HERE, "results", f"sklearn-{datetime.date.today().isoformat()}"
                            + ("-quick" if args.quick else "")
                            + ("-" + "-".join(args.datasets) if args.datasets else ""))
        with open(stem + ".json", "w") as f:
            json.dump(report, f, indent=1)
        with open(stem + ".md", "w") as f:
            f.write(markdown(report))
        print(f"wrote {stem}.json and .md")


if __name__ == "__main__":
    main()
