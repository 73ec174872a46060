"""Model quality at the stack's default budget: TPOT alone, the baselines, what is published.

    .venv/bin/python -m bench.quality                     # 5 data sets x 2 seeds, ~15-20 minutes
    .venv/bin/python -m bench.quality --datasets iris --seeds 1 --max-time-mins 0.1 \\
        --generations 1 --population-size 4              # smoke run, ~30 s

For each scikit-learn data set (no downloads) and seed, the trainer's own sequence
(``tpotserve_trainer.jobs._train``): the payload from ``build_training_payload`` with the
server's defaults (``tpotserve.settings``), ``data.holdout_split``, ``baselines.cv_splitter``,
``automl.search`` on those folds, ``baselines.fit_baselines``, ``leaderboard.choose``. Recorded
per run: every candidate's CV and holdout score, TPOT's wall time, the published candidate,
and a paired bootstrap of the holdout difference between the published model and the
best baseline on the holdout (how much of a difference the holdout can tell apart).

Writes ``bench/results/quality.json`` (after every run, so an interrupted run keeps what it
measured) and prints the table. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import json

import numpy as np
import pandas as pd
from sklearn import datasets as sk_datasets
from sklearn.metrics import accuracy_score, r2_score

from tpotserve.clock import utc_iso
from tpotserve.schema import RetrainRequest, build_training_payload
from tpotserve.settings import load_settings

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results" / "quality.json"

DATASETS: dict[str, tuple[str, Any]] = {
    "breast_cancer": ("classification", sk_datasets.load_breast_cancer),
    "wine": ("classification", sk_datasets.load_wine),
    "digits": ("classification", sk_datasets.load_digits),
    "diabetes": ("regression", sk_datasets.load_diabetes),
    "iris": ("classification", sk_datasets.load_iris),
}
BASELINES = ("dummy", "linear", "hist_gradient_boosting")
SHORT = {"dummy": "dummy", "linear": "linear", "hist_gradient_boosting": "HGB", "tpot": "TPOT"}
# Score functions on predictions, for the bootstrap (the default scorers: accuracy, r2).
SCORE_FUNCTIONS = {"accuracy": accuracy_score, "r2": r2_score}
BOOTSTRAP_RESAMPLES = 2000


def frame(name: str) -> tuple[pd.DataFrame, pd.Series, str]:
    task, loader = DATASETS[name]
    bunch = loader(as_frame=True)
    return bunch.data, bunch.target.rename("target"), task


def payload(settings: Any, name: str, task: str, seed: int, args: argparse.Namespace) -> Any:
    """The run the API would enqueue for this data set: the server's defaults unless overridden."""
    request = RetrainRequest(
        dataset=name,
        random_state=seed,
        max_time_mins=args.max_time_mins,
        generations=args.generations,
        population_size=args.population_size,
        cv=args.cv,
    )
    return build_training_payload(request, settings, target="target", task=task, dataset=name, reason="bench")


def paired_bootstrap(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, scoring: str,
                     resamples: int, seed: int) -> dict[str, float]:
    """score(a) - score(b) on the holdout, and its 95% interval over resampled holdout rows."""
    score = SCORE_FUNCTIONS[scoring]
    rng = np.random.default_rng(seed)
    n = len(y)
    diffs = np.empty(resamples)
    for i in range(resamples):
        rows = rng.integers(0, n, n)
        diffs[i] = score(y[rows], pred_a[rows]) - score(y[rows], pred_b[rows])
    return {
        "diff": float(score(y, pred_a) - score(y, pred_b)),
        "low": float(np.percentile(diffs, 2.5)),
        "high": float(np.percentile(diffs, 97.5)),
    }


def one_run(settings: Any, name: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """jobs._train's sequence on one data set and seed, without the store."""
    from tpotserve_trainer import automl, baselines, data, leaderboard

    X, y, task = frame(name)
    run = payload(settings, name, task, seed, args)
    X_train, X_hold, y_train, y_hold = data.holdout_split(X, y, run)
    folds = baselines.cv_splitter(run)
    load_before = os.getloadavg()[0]
    with automl.compute_for(settings, run) as compute:
        started = time.perf_counter()
        result = automl.search(run, X_train, y_train, compute=compute, cv=folds)
        tpot_seconds = time.perf_counter() - started
    tpot_pick = baselines.Candidate("tpot", result.pipeline, result.cv_score)
    tpot_pick.holdout_score = automl.holdout_score(
        result.pipeline, X_hold, y_hold, run.scoring, result.classes, result.label_encoded
    )
    tpot_pick.predict_ms = baselines.one_row_predict_ms(result.pipeline, X_hold.to_numpy(dtype=float)[:1])
    fitted = baselines.fit_baselines(run, X_train, y_train, X_hold, y_hold, folds)
    chosen, selection = leaderboard.choose([tpot_pick, *fitted])

    candidates = {c.name: c for c in [tpot_pick, *fitted]}
    rows, truth = X_hold.to_numpy(dtype=float), y_hold.to_numpy()
    predictions = {c.name: np.asarray(c.pipeline.predict(rows)) for c in candidates.values() if c.pipeline is not None}
    scored_baselines = [c for c in fitted if c.holdout_score is not None]
    best_baseline = max(scored_baselines, key=lambda c: c.holdout_score)  # the best in hindsight
    bootstrap = {}
    if run.scoring in SCORE_FUNCTIONS:
        for label, candidate in (("published", chosen), ("tpot", tpot_pick)):
            bootstrap[f"{label}_vs_best_baseline"] = paired_bootstrap(
                truth, predictions[candidate.name], predictions[best_baseline.name], run.scoring,
                args.bootstrap, seed)
    return {
        "dataset": name,
        "task": task,
        "scoring": run.scoring,
        "seed": seed,
        "rows": len(X),
        "features": int(X.shape[1]),
        "training_rows": len(X_train),
        "holdout_rows": len(X_hold),
        "budget": {key: getattr(run, key) for key in
                   ("max_time_mins", "generations", "population_size", "cv", "n_jobs", "holdout_fraction")},
        "tpot_seconds": round(tpot_seconds, 2),
        "tpot_evaluated_pipelines": result.evaluated_pipelines,
        "tpot_pipeline": " ".join(result.pipeline_text.split()),
        "load_average_before": round(load_before, 2),
        "candidates": {c.name: {k: v for k, v in c.summary().items() if k not in ("name", "pipeline")}
                       for c in candidates.values()},
        "published": {"name": chosen.name, "cv_score": chosen.cv_score, "holdout_score": chosen.holdout_score},
        "selection": {k: v for k, v in selection.items() if k != "rule"},
        "best_baseline_on_holdout": {"name": best_baseline.name, "holdout_score": best_baseline.holdout_score},
        "one_holdout_row": round(1 / len(X_hold), 4) if run.scoring == "accuracy" else None,
        "bootstrap": bootstrap,
    }


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def table(runs: list[dict[str, Any]]) -> str:
    """Holdout scores per data set and seed (CV in brackets for the published model), as Markdown."""
    lines = [
        "| data set | metric | seed | holdout rows | TPOT alone | dummy | linear | HGB | published (CV) "
        "| published - best baseline [95% CI] | TPOT s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        cands = run["candidates"]
        pub = run["published"]
        boot = run.get("bootstrap", {}).get("published_vs_best_baseline")
        best = SHORT[run["best_baseline_on_holdout"]["name"]]
        diff = (f"{boot['diff']:+.3f} [{boot['low']:+.3f}, {boot['high']:+.3f}] vs {best}" if boot else "-")
        lines.append(
            f"| {run['dataset']} | {run['scoring']} | {run['seed']} | {run['holdout_rows']} "
            f"| {_score(cands['tpot']['holdout_score'])} "
            + " ".join(f"| {_score(cands.get(b, {}).get('holdout_score'))}" for b in BASELINES)
            + f" | {_score(pub['holdout_score'])} {SHORT.get(pub['name'], pub['name'])} ({_score(pub['cv_score'])}) "
            f"| {diff} | {run['tpot_seconds']:.0f} |"
        )
    return "\n".join(lines)


def verdict(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per run: is the published model at least as good as the best baseline within the noise
    (the bootstrap interval of the difference reaches 0 or above)?"""
    out = []
    for run in runs:
        boot = run.get("bootstrap", {}).get("published_vs_best_baseline")
        if boot is None:
            continue
        out.append({
            "dataset": run["dataset"], "seed": run["seed"], "published": run["published"]["name"],
            "diff": round(boot["diff"], 4),
            "status": ("better or equal" if boot["diff"] >= 0
                       else "worse, within noise" if boot["high"] >= 0 else "worse, beyond noise"),
        })
    return {"runs": out, "all_within_noise": all(v["status"] != "worse, beyond noise" for v in out)}


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def write(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    settings = load_settings()
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--max-time-mins", type=float, default=settings.tpot_max_time_mins)
    parser.add_argument("--generations", type=int, default=settings.tpot_generations)
    parser.add_argument("--population-size", type=int, default=settings.tpot_population_size)
    parser.add_argument("--cv", type=int, default=settings.tpot_cv)
    parser.add_argument("--n-jobs", type=int, default=settings.tpot_n_jobs,
                        help="TPOT's processes (TPOT_N_JOBS; default %(default)s)")
    parser.add_argument("--bootstrap", type=int, default=BOOTSTRAP_RESAMPLES, help="paired bootstrap resamples")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    # The defaults are the server's own; TPOT_N_JOBS (and only it) comes from --n-jobs.
    settings = load_settings(tpot_n_jobs=args.n_jobs, dask_scheduler_address=None)

    cpus = os.cpu_count() or 1
    if os.getloadavg()[0] > cpus / 2:
        print(f"warning: load average {os.getloadavg()[0]:.2f} on {cpus} cores; "
              "TPOT's budget is wall time, so a busy machine evaluates fewer pipelines", file=sys.stderr)
    document: dict[str, Any] = {
        "benchmark": "quality",
        "started_at": utc_iso(),
        "command": " ".join([".venv/bin/python -m bench.quality", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(),
        "settings": {"max_time_mins": args.max_time_mins, "generations": args.generations,
                     "population_size": args.population_size, "cv": args.cv, "n_jobs": args.n_jobs,
                     "holdout_fraction": settings.holdout_fraction, "bootstrap_resamples": args.bootstrap},
        "runs": [],
        "complete": False,
    }
    from tpotserve_trainer import automl

    document["library_versions"] = automl.library_versions()
    started = time.monotonic()
    for name in args.datasets:
        for seed in args.seeds:
            print(f"{name} seed {seed} ...", flush=True)
            run = one_run(settings, name, seed, args)
            document["runs"].append(run)
            pub = run["published"]
            print(f"  TPOT {run['candidates']['tpot']['holdout_score']:.4f} in {run['tpot_seconds']:.0f} s; "
                  f"published {pub['name']} {pub['holdout_score']:.4f} (CV {pub['cv_score']:.4f})", flush=True)
            write(args.out, document)
    document.update(complete=True, finished_at=utc_iso(), elapsed_s=round(time.monotonic() - started, 1),
                    verdict=verdict(document["runs"]))
    document["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    write(args.out, document)
    print()
    print(table(document["runs"]))
    print()
    for item in document["verdict"]["runs"]:
        print(f"{item['dataset']} seed {item['seed']}: published {item['published']}, "
              f"{item['diff']:+.4f} vs the best baseline: {item['status']}")
    print(f"\n{args.out} ({document['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":  # TPOT starts Dask processes, which import this module again
    raise SystemExit(main())
