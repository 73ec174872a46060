"""Every TPOT knob in one place: build the search, run it, return a plain pipeline."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.metrics import get_scorer

from tpotserve.errors import TrainingFailed
from tpotserve.offline import disable_tpot_update_check
from tpotserve.schema import TrainingPayload

disable_tpot_update_check()
import tpot  # noqa: E402 - the update check must be disabled first

log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    """A fitted scikit-learn pipeline and what TPOT found out about it."""

    pipeline: Any
    classes: list[Any] | None
    cv_score: float
    pipeline_text: str
    evaluated_pipelines: int
    label_encoded: bool = False
    """True when the pipeline predicts 0..n-1 and ``classes`` maps them to labels."""


Progress = Callable[[dict[str, Any]], None]


def _progress_evolver(report: Progress, planned_generations: int) -> type:
    """TPOT's evolver, reporting after every evaluated generation.

    TPOT 1.1 accepts a ``callback`` argument but never calls it; the evolver's
    ``evaluate_population`` runs once per generation (the initial population
    included), which is the natural place to read the progress.
    """

    class ProgressEvolver(tpot.evolvers.BaseEvolver):
        def evaluate_population(self) -> Any:
            result = super().evaluate_population()
            try:
                report(_generation_summary(self, planned_generations))
            except Exception:  # noqa: BLE001 - progress must never break a search
                log.exception("progress report failed")
            return result

    return ProgressEvolver


@contextmanager
def _reporting(report: Progress | None, planned_generations: int) -> Iterator[None]:
    """Make TPOT's fit() build the reporting evolver.

    fit() reads ``tpot.evolvers.BaseEvolver`` each time it runs, and no
    parameter selects another class, so swap the module attribute for the
    duration of the fit. A work-horse runs one job, so nothing else sees it.
    """
    if report is None:
        yield
        return
    original = tpot.evolvers.BaseEvolver
    tpot.evolvers.BaseEvolver = _progress_evolver(report, planned_generations)
    try:
        yield
    finally:
        tpot.evolvers.BaseEvolver = original


def _generation_summary(evolver: Any, planned: int) -> dict[str, Any]:
    frame = evolver.population.evaluated_individuals
    column = evolver.objective_names[0]
    scores = pd.to_numeric(frame[column], errors="coerce")
    valid = scores.dropna()
    weight = evolver.objective_function_weights[0]
    best = None if valid.empty else float(valid.max() if weight > 0 else valid.min())
    return {
        "generation": int(evolver.generation) + 1,
        "generations_planned": planned,
        "pipelines_evaluated": int(valid.size),
        "pipelines_failed": int(len(frame) - valid.size),
        "best_cv_score": best,
    }


def build_estimator(payload: TrainingPayload) -> Any:
    """The TPOT estimator for a payload; the only place TPOT's options are set."""
    cls = tpot.TPOTClassifier if payload.task == "classification" else tpot.TPOTRegressor
    return cls(
        scorers=[payload.scoring],
        scorers_weights=[1],
        cv=payload.cv,
        max_time_mins=payload.max_time_mins,
        # One pipeline may use at most the whole budget; TPOT's default is 10 minutes.
        max_eval_time_mins=max(payload.max_time_mins / 2, 0.1),
        generations=payload.generations,
        population_size=payload.population_size,
        n_jobs=payload.n_jobs,
        random_state=payload.random_state,
        verbose=0,
    )


def search(
    payload: TrainingPayload, X: pd.DataFrame, y: pd.Series, report: Progress | None = None
) -> SearchResult:
    """Run TPOT on (X, y) and return the best pipeline, refit to predict y's own labels."""
    estimator = build_estimator(payload)
    features = X.to_numpy(dtype=float)
    target = y.to_numpy()
    with warnings.catch_warnings():
        # "Both generations and max_time_mins are set" and the label-encoding notice.
        warnings.simplefilter("ignore", UserWarning)
        try:
            with _reporting(report, payload.generations):
                estimator.fit(features, target)
        except Exception as exc:  # noqa: BLE001 - TPOT raises bare Exceptions for bad data
            raise TrainingFailed(f"TPOT could not fit: {type(exc).__name__}: {exc}") from exc
    fitted = getattr(estimator, "fitted_pipeline_", None)
    if fitted is None:
        raise TrainingFailed("TPOT finished without a pipeline (every candidate failed or timed out)")

    pipeline, classes, encoded = fitted, None, False
    if payload.task == "classification":
        pipeline, classes = _with_own_labels(fitted, estimator, features, target)
        encoded = pipeline is fitted and getattr(estimator, "label_encoder_", None) is not None

    best = estimator.selected_best_score
    score_column = estimator.objective_names_for_selection[0]
    cv_score = float(best[score_column])
    evaluated = estimator.evaluated_individuals
    return SearchResult(
        pipeline=pipeline,
        classes=classes,
        cv_score=cv_score,
        pipeline_text=str(fitted),
        evaluated_pipelines=int(pd.to_numeric(evaluated[score_column], errors="coerce").notna().sum()),
        label_encoded=encoded,
    )


def holdout_score(
    model: Any, X: pd.DataFrame, y: pd.Series, scoring: str, classes: list[Any] | None, label_encoded: bool
) -> float:
    """``scoring`` of a fitted pipeline on the holdout rows (greater is better, as in scikit-learn)."""
    target = y.to_numpy()
    if label_encoded and classes is not None:
        # The pipeline predicts 0..n-1; compare it with the encoded truth.
        index = {label: i for i, label in enumerate(classes)}
        target = np.array([index[_plain(v)] for v in target])
    return float(get_scorer(scoring)(model, X.to_numpy(dtype=float), target))


def _with_own_labels(fitted: Any, estimator: Any, X: np.ndarray, y: np.ndarray) -> tuple[Any, list[Any]]:
    """A pipeline whose predict() returns y's own labels, and its class order.

    TPOT label-encodes string targets (XGBoost needs 0..n-1) and its
    fitted_pipeline_ then predicts integers. Refit a clone on the real labels
    so that ``joblib.load(path).predict(X)`` gives class names; estimators that
    insist on encoded labels keep the encoded pipeline and the metadata maps
    columns to names.
    """
    encoder = getattr(estimator, "label_encoder_", None)
    if encoder is None:
        return fitted, [_plain(c) for c in fitted.classes_]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            relabeled = clone(fitted).fit(X, y)
        return relabeled, [_plain(c) for c in relabeled.classes_]
    except Exception as exc:  # noqa: BLE001 - e.g. XGBoost refuses string labels
        log.info("keeping label-encoded pipeline (%s)", exc)
        names = encoder.inverse_transform(np.asarray(fitted.classes_, dtype=int))
        return fitted, [_plain(c) for c in names]


def _plain(value: Any) -> Any:
    """numpy scalars -> JSON-able Python values."""
    return value.item() if hasattr(value, "item") else value


def library_versions() -> dict[str, str]:
    """The versions a reader needs to unpickle the artifact."""
    import platform

    import joblib
    import sklearn

    return {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "tpot": tpot.__version__,
        "joblib": joblib.__version__,
        "numpy": np.__version__,
    }
