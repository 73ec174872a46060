"""TPOT's own pipelines, taken from real searches on the shipped data set (iris), one per kind,
for ``bench.compiled --from-runs``.

    .venv/bin/python -m bench.tpot_runs          # the searches (cached), then what was found

Each search is the trainer's (``tpotserve_trainer.automl.search``, TPOT 1.1's default
classification space, the trainer's folds), with a larger population than a retrain's default
so that more kinds get evaluated. From every pipeline TPOT scored, the best-scoring one of each
kind is kept, unfitted, as TPOT built it: a boosted ensemble, an MLP, a kernel-approximation
chain (RBFSampler or Nystroem), a forest. Seeds are tried in turn until every kind has one.
Cached in ``bench/.work/tpot-runs.joblib`` (delete it to search again).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import joblib
import pandas as pd

WORK = Path(__file__).resolve().parent / ".work"
CACHE = WORK / "tpot-runs.joblib"

KINDS = {
    "run-boosted": ("XGBClassifier", "GradientBoostingClassifier", "AdaBoostClassifier",
                    "HistGradientBoostingClassifier", "LGBMClassifier"),
    "run-mlp": ("MLPClassifier",),
    "run-kernel": ("RBFSampler", "Nystroem"),
    "run-forest": ("RandomForestClassifier", "ExtraTreesClassifier"),
}
"""Kind -> the class names (any step, at any depth) that make a pipeline of that kind."""


def kinds_of(pipeline: Any) -> list[str]:
    text = " ".join(str(pipeline).split())
    return [kind for kind, names in KINDS.items() if any(f"{name}(" in text for name in names)]


def collect(seeds: tuple[int, ...] = (1, 2, 3, 4), minutes: float = 2.0, population: int = 24,
            generations: int = 5) -> dict[str, dict[str, Any]]:
    """Kind -> {"pipeline" (unfitted), "cv_score", "seed", "text"}; searched once, then cached."""
    if CACHE.exists():
        return joblib.load(CACHE)
    from tpotserve.schema import TrainingPayload
    from tpotserve_trainer import automl, baselines

    from .models import iris_xy

    X, y = iris_xy()
    found: dict[str, dict[str, Any]] = {}
    for seed in seeds:
        run = TrainingPayload(dataset="iris", target="species", task="classification", max_time_mins=minutes,
                              generations=generations, population_size=population, cv=5, scoring="accuracy",
                              n_jobs=2, random_state=seed)
        started = time.monotonic()
        result = automl.search(run, X, y, cv=baselines.cv_splitter(run))
        table = result.evaluated
        scores = pd.to_numeric(table[result.score_column], errors="coerce")
        print(f"seed {seed}: {int(scores.notna().sum())} pipelines scored in {time.monotonic() - started:.0f} s",
              flush=True)
        for label in scores.dropna().sort_values(ascending=False, kind="stable").index:
            pipeline = table.loc[label, "Instance"]
            for kind in kinds_of(pipeline):
                if kind not in found:
                    found[kind] = {"pipeline": pipeline, "cv_score": float(scores[label]), "seed": seed,
                                   "text": " ".join(str(pipeline).split())}
        if set(found) == set(KINDS):
            break
    WORK.mkdir(parents=True, exist_ok=True)
    joblib.dump(found, CACHE)
    return found


def main() -> int:
    found = collect()
    for kind in KINDS:
        entry = found.get(kind)
        print(f"{kind}: " + (f"seed {entry['seed']}, CV {entry['cv_score']:.4f}: {entry['text']}" if entry
                             else "none of TPOT's scored pipelines is of this kind"))
    return 0 if set(found) == set(KINDS) else 1


if __name__ == "__main__":
    sys.exit(main())
