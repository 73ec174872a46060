"""A version's model card: what it was trained on, what it is, how good, what it relies on.

Computed once, by the trainer, when the version is written (``card.json`` and
``card.md`` in the version, hashed in its meta.json), never per request.
skops' ``Card`` was considered: it renders a Hugging Face model-card template,
pulls in huggingface_hub, and still needs every figure below computed by hand;
the figures are the work, so the card is a plain JSON object with one small
Markdown renderer beside it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.inspection import permutation_importance
from sklearn.metrics import confusion_matrix, get_scorer

from tpotserve.schema import TrainingPayload

from . import export

BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95
PERMUTATION_REPEATS = 5


def build(
    *,
    run: TrainingPayload,
    pipeline: Any,
    classes: list[Any] | None,
    X: pd.DataFrame,
    y: pd.Series,
    X_hold: pd.DataFrame,
    y_hold: pd.Series,
    training_rows: int,
    cv_score: float,
    holdout_score: float,
    selection: dict[str, Any],
) -> dict[str, Any]:
    """The card's figures (without the gate's decision, which is only known under the store's lock)."""
    rows = X_hold.to_numpy(dtype=float)
    truth = y_hold.to_numpy()
    code, code_error = export.verified_code(pipeline)
    card: dict[str, Any] = {
        "model": run.model,
        "description": run.description,
        "task": run.task,
        "dataset": _dataset(run, X, y, training_rows, len(X_hold)),
        "pipeline": {
            "selected": selection.get("winner"),
            "source": selection.get("source"),
            "steps": export.steps(pipeline),
            "code": code,
            **({"code_unavailable": code_error} if code_error else {}),
        },
        "selection": selection,
        "scores": {
            "scoring": run.scoring,
            "cv": cv_score,
            "cv_folds": run.cv,
            "holdout": holdout_score,
            "holdout_interval": bootstrap_interval(pipeline, rows, truth, run.scoring),
        },
        "permutation_importance": importance(pipeline, rows, truth, run.scoring, list(X.columns)),
        "budget": {key: getattr(run, key) for key in ("max_time_mins", "generations", "population_size", "cv")},
    }
    if run.task == "classification":
        predicted = pipeline.predict(rows)
        labels = list(classes or sorted(set(truth.tolist()) | set(predicted.tolist()), key=str))
        card["confusion_matrix"] = {
            "labels": [_plain(v) for v in labels],
            "rows_are": "true class",
            "matrix": confusion_matrix(truth, predicted, labels=labels).tolist(),
        }
    else:
        card["residuals"] = residuals(truth, pipeline.predict(rows))
    return card


def _dataset(run: TrainingPayload, X: pd.DataFrame, y: pd.Series, training_rows: int, holdout_rows: int) -> dict:
    info: dict[str, Any] = {
        "id": run.dataset,
        "sha256": run.dataset_sha256,
        "rows": int(len(X)),
        "training_rows": training_rows,
        "holdout_rows": holdout_rows,
        "target": run.target,
        "features": [
            {"name": str(c), "type": _kind(X[c]), "min": _plain(X[c].min()), "max": _plain(X[c].max()),
             "distinct": int(X[c].nunique())}
            for c in X.columns
        ],
    }
    if run.task == "classification":
        shares = y.value_counts(normalize=True, sort=False)
        info["class_balance"] = {str(_plain(k)): round(float(v), 4) for k, v in sorted(shares.items(), key=lambda kv: str(kv[0]))}
    else:
        values = y.to_numpy(dtype=float)
        info["target_range"] = {"min": float(values.min()), "max": float(values.max()),
                                "mean": float(values.mean()), "std": float(values.std())}
    return info


def _kind(column: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(column):
        return "boolean"
    if pd.api.types.is_integer_dtype(column):
        return "integer"
    return "number"


class _Replay(BaseEstimator):
    """Answers a scorer from predictions computed once: X is a column of row indices.

    A bootstrap interval needs the score on 1,000 resamples of the holdout; the
    pipeline predicts the holdout once, and any scikit-learn scorer (accuracy,
    roc_auc_ovr, neg_log_loss...) reads the resampled rows back from here.
    """

    def __init__(self, predicted: Any = None, proba: Any = None, classes: Any = None) -> None:
        self.predicted = predicted
        self.proba = proba
        self.classes = classes

    def fit(self, X: Any, y: Any = None) -> _Replay:
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predicted[X[:, 0].astype(int)]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.proba[X[:, 0].astype(int)]

    @property
    def classes_(self) -> Any:
        return self.classes


class _ReplayClassifier(ClassifierMixin, _Replay):
    pass


class _ReplayRegressor(RegressorMixin, _Replay):
    pass


def bootstrap_interval(pipeline: Any, rows: np.ndarray, truth: np.ndarray, scoring: str,
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict[str, Any] | None:
    """A percentile bootstrap interval of the holdout score (resampling holdout rows)."""
    is_classifier = hasattr(pipeline, "classes_")
    predicted = pipeline.predict(rows)
    if is_classifier:
        proba = pipeline.predict_proba(rows) if hasattr(pipeline, "predict_proba") else None
        replay: _Replay = _ReplayClassifier(predicted, proba, pipeline.classes_)
    else:
        replay = _ReplayRegressor(predicted)
    scorer = get_scorer(scoring)
    rng = np.random.default_rng(seed)
    index = np.arange(len(truth))
    scores = []
    for _ in range(resamples):
        sample = rng.choice(index, size=len(index), replace=True)
        try:
            scores.append(float(scorer(replay, sample.reshape(-1, 1), truth[sample])))
        except ValueError:  # e.g. a resample that holds one class only, for roc_auc
            continue
    if len(scores) < resamples // 2:
        return None
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(scores, [tail, 100 - tail])
    return {"low": float(low), "high": float(high), "confidence": CONFIDENCE, "resamples": len(scores),
            "method": "percentile bootstrap over holdout rows"}


def importance(pipeline: Any, rows: np.ndarray, truth: np.ndarray, scoring: str,
               names: list[str]) -> dict[str, Any]:
    """Permutation importance on the holdout: how much the score drops when a feature is shuffled."""
    try:
        found = permutation_importance(pipeline, rows, truth, scoring=scoring, n_repeats=PERMUTATION_REPEATS,
                                       random_state=0)
    except Exception as exc:  # noqa: BLE001 - a card without importances beats no version
        return {"error": f"{type(exc).__name__}: {exc}"}
    features = [
        {"feature": name, "mean": float(mean), "std": float(std)}
        for name, mean, std in zip(names, found.importances_mean, found.importances_std)
    ]
    features.sort(key=lambda f: -f["mean"])
    return {"scoring": scoring, "n_repeats": PERMUTATION_REPEATS, "on": "holdout", "features": features}


def residuals(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    errors = np.asarray(predicted, dtype=float) - np.asarray(truth, dtype=float)
    absolute = np.abs(errors)
    return {
        "mean_error": float(errors.mean()),
        "mae": float(absolute.mean()),
        "rmse": float(np.sqrt((errors**2).mean())),
        "median_abs_error": float(np.median(absolute)),
        "p90_abs_error": float(np.percentile(absolute, 90)),
        "max_abs_error": float(absolute.max()),
    }


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


# --- Markdown ---------------------------------------------------------------
def markdown(card: dict[str, Any]) -> str:
    """The card as Markdown (GET .../card with Accept: text/markdown, and the CLI)."""
    sections = (_md_header, _md_dataset, _md_scores, _md_reliance, _md_pipeline, _md_training)
    return "\n".join(line for section in sections for line in section(card))


def _md_header(card: dict[str, Any]) -> list[str]:
    data, pipe = card["dataset"], card["pipeline"]
    out = [f"# Model card: {card.get('model')} {card.get('version', '')}".rstrip(), ""]
    if card.get("description"):
        out += [card["description"], ""]
    return out + [
        f"- Task: {card['task']}, target `{data['target']}`",
        f"- Trained: {card.get('created_at', '')} by job {card.get('job_id') or '-'} ({card.get('reason') or 'retrain'})",
        f"- Selected: **{pipe['selected']}** ({pipe['source']}): {card['selection'].get('summary', '')}",
        "",
    ]


def _md_dataset(card: dict[str, Any]) -> list[str]:
    data = card["dataset"]
    out = [
        "## Data set",
        "",
        f"`{data['id']}` (sha256 {str(data.get('sha256') or '-')[:12]}): {data['rows']} rows, "
        f"{data['training_rows']} for training, {data['holdout_rows']} held out; {len(data['features'])} features.",
        "",
        "| feature | type | min | max | distinct |",
        "|---|---|---:|---:|---:|",
        *[f"| {f['name']} | {f['type']} | {_num(f['min'])} | {_num(f['max'])} | {f['distinct']} |"
          for f in data["features"]],
        "",
    ]
    if "class_balance" in data:
        return out + ["Class balance: " + ", ".join(f"{k} {v:.1%}" for k, v in data["class_balance"].items()), ""]
    r = data["target_range"]
    return out + [f"Target range: {_num(r['min'])} to {_num(r['max'])} (mean {_num(r['mean'])}, sd {_num(r['std'])})", ""]


def _md_scores(card: dict[str, Any]) -> list[str]:
    scores = card["scores"]
    interval = scores.get("holdout_interval")
    out = [
        "## Scores",
        "",
        f"- {scores['scoring']}, {scores['cv_folds']}-fold CV on the training rows: {_num(scores['cv'])}",
        f"- {scores['scoring']} on the holdout: {_num(scores['holdout'])}"
        + (f" ({interval['confidence']:.0%} bootstrap interval {_num(interval['low'])} to {_num(interval['high'])},"
           f" {interval['resamples']} resamples)" if interval else ""),
        "",
    ]
    if "confusion_matrix" in card:
        cm = card["confusion_matrix"]
        out += ["Confusion matrix on the holdout (rows: true class, columns: predicted):", "",
                "| | " + " | ".join(str(label) for label in cm["labels"]) + " |",
                "|---|" + "---:|" * len(cm["labels"]),
                *[f"| **{label}** | " + " | ".join(str(n) for n in row) + " |"
                  for label, row in zip(cm["labels"], cm["matrix"])], ""]
    if "residuals" in card:
        out += ["Residuals on the holdout (predicted minus true): "
                + ", ".join(f"{k.replace('_', ' ')} {_num(v)}" for k, v in card["residuals"].items()), ""]
    return out


def _md_reliance(card: dict[str, Any]) -> list[str]:
    pi = card.get("permutation_importance", {})
    if "features" not in pi:
        return ["## What it relies on", "", f"Permutation importance unavailable: {pi.get('error')}", ""]
    return ["## What it relies on", "",
            f"Permutation importance on the holdout (drop in {pi['scoring']}, {pi['n_repeats']} repeats):", "",
            "| feature | mean | sd |", "|---|---:|---:|",
            *[f"| {f['feature']} | {_num(f['mean'])} | {_num(f['std'])} |" for f in pi["features"]], ""]


def _md_pipeline(card: dict[str, Any]) -> list[str]:
    pipe = card["pipeline"]
    out = ["## Pipeline", "", *_step_lines(pipe["steps"], 0), ""]
    if pipe.get("code"):
        return out + ["Rebuild it (unfitted) with:", "", "```python", pipe["code"].rstrip(), "```", ""]
    return out + [f"No code export: {pipe.get('code_unavailable')}", ""]


def _md_training(card: dict[str, Any]) -> list[str]:
    gate = card.get("gate") or {}
    budget = card["budget"]
    return [
        "## Training",
        "",
        f"- Budget: {budget['max_time_mins']} min, {budget['generations']} generations of {budget['population_size']}, "
        f"{budget['cv']}-fold CV; took {card.get('training_seconds')} s",
        f"- Gate ({gate.get('mode')}): {'published' if gate.get('promoted') else 'not published'}: {gate.get('reason')}",
        "- Libraries: " + ", ".join(f"{k} {v}" for k, v in (card.get("library_versions") or {}).items()),
        "",
    ]


def _step_lines(steps: list[dict[str, Any]], depth: int) -> list[str]:
    lines = []
    for number, step in enumerate(steps, start=1):
        params = ", ".join(f"{k}={v!r}" for k, v in step["params"].items())
        lines.append(f"{'   ' * depth}{number}. `{step['name']}`: {step['class']}"
                     f"({params}) from `{step['module']}`")
        lines += _step_lines(step.get("steps", []), depth + 1)
    return lines


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
