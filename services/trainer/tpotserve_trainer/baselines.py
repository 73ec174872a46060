"""Strong scikit-learn defaults, scored on the same folds and holdout as TPOT's search.

At the stack's default budget TPOT's pick is often below a default
``HistGradientBoosting*`` fitted in a second (docs/quality.md). Every training
therefore fits three baselines beside the search, and what is published is the
best of all by CV score (``leaderboard.choose``): the stack never serves worse
than these defaults because the search ran out of time.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import get_scorer
from sklearn.model_selection import BaseCrossValidator, KFold, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tpotserve.schema import TrainingPayload

COST_RANK = {"dummy": 0, "linear": 1, "hist_gradient_boosting": 2}
"""Which baseline is cheaper to serve, for ties (TPOT's pick is ranked by its measured predict time)."""


@dataclass
class Candidate:
    """One model that could be published: TPOT's pick or a baseline, fitted on the training rows."""

    name: str
    """``tpot`` or a baseline's name (``dummy``, ``linear``, ``hist_gradient_boosting``)."""
    pipeline: Any
    cv_score: float | None
    holdout_score: float | None = None
    fit_seconds: float | None = None
    predict_ms: float | None = None
    """Median wall time of one one-row ``predict`` (or ``predict_proba``), in milliseconds."""
    error: str | None = None
    """Why a baseline has no score (e.g. it failed on these data); such a baseline is never chosen."""

    @property
    def source(self) -> str:
        return "tpot" if self.name == "tpot" else "baseline"

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "cv_score": self.cv_score,
            "holdout_score": self.holdout_score,
            "fit_seconds": self.fit_seconds,
            "predict_ms": self.predict_ms,
            "pipeline": str(self.pipeline) if self.pipeline is not None else None,
            **({"error": self.error} if self.error else {}),
        }


def cv_splitter(run: TrainingPayload) -> BaseCrossValidator:
    """The folds TPOT and the baselines share: TPOT's own choice for an integer ``cv``
    (stratified for classification, shuffled), but with a fixed seed, so both see the
    same folds even when the run has no random_state."""
    seed = run.random_state if run.random_state is not None else 0
    if run.task == "classification":
        return StratifiedKFold(n_splits=run.cv, shuffle=True, random_state=seed)
    return KFold(n_splits=run.cv, shuffle=True, random_state=seed)


def estimators(task: str, random_state: int | None) -> dict[str, Any]:
    """The three defaults, unfitted: a prior/mean dummy, a linear model on standardised
    features, and gradient-boosted trees with scikit-learn's defaults."""
    if task == "classification":
        return {
            "dummy": DummyClassifier(strategy="prior"),
            "linear": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
            "hist_gradient_boosting": HistGradientBoostingClassifier(random_state=random_state),
        }
    return {
        "dummy": DummyRegressor(strategy="mean"),
        "linear": make_pipeline(StandardScaler(), Ridge()),
        "hist_gradient_boosting": HistGradientBoostingRegressor(random_state=random_state),
    }


def fit_baselines(
    run: TrainingPayload,
    X_train: pd.DataFrame,
    y_train: pd.Series,
    X_hold: pd.DataFrame,
    y_hold: pd.Series,
    cv: BaseCrossValidator,
) -> list[Candidate]:
    """Each baseline's CV score on ``cv`` (the search's folds), then fitted on all the
    training rows, scored on the holdout and timed. A baseline that fails is kept with
    its error and no score, so the leaderboard says so and it is never published."""
    features, target = X_train.to_numpy(dtype=float), y_train.to_numpy()
    seed = run.random_state if run.random_state is not None else 0
    found = []
    for name, estimator in estimators(run.task, seed).items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # convergence notices: the score says enough
                scores = cross_val_score(estimator, features, target, cv=cv, scoring=run.scoring,
                                         error_score="raise")
                started = time.perf_counter()
                fitted = estimator.fit(features, target)
                fit_seconds = time.perf_counter() - started
        except Exception as exc:  # noqa: BLE001 - a baseline must never fail the training
            found.append(Candidate(name, None, None, error=f"{type(exc).__name__}: {exc}"))
            continue
        candidate = Candidate(name, fitted, float(np.mean(scores)), fit_seconds=round(fit_seconds, 4))
        measure(candidate, X_hold, y_hold, run.scoring)
        found.append(candidate)
    return found


def measure(candidate: Candidate, X_hold: pd.DataFrame, y_hold: pd.Series, scoring: str) -> None:
    """The candidate's holdout score and one-row predict time (what serving it costs)."""
    rows = X_hold.to_numpy(dtype=float)
    candidate.holdout_score = float(get_scorer(scoring)(candidate.pipeline, rows, y_hold.to_numpy()))
    candidate.predict_ms = one_row_predict_ms(candidate.pipeline, rows[:1])


def one_row_predict_ms(model: Any, row: np.ndarray, repeats: int = 15) -> float:
    """Median milliseconds of the call a one-row request makes (predict_proba when there is one)."""
    call = model.predict_proba if hasattr(model, "predict_proba") else model.predict
    times = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(repeats):
            started = time.perf_counter()
            call(row)
            times.append(time.perf_counter() - started)
    return round(float(np.median(times)) * 1000, 4)
