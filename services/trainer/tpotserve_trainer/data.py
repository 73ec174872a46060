"""Data sets in, (X, y) out, with the same checks the API ran before enqueueing."""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd
from sklearn.model_selection import train_test_split

from tpotserve.datasets import DatasetStore, check_trainable
from tpotserve.errors import InvalidInput
from tpotserve.schema import TrainingPayload, feature_schema

# feature_schema: the features of the meta.json jobs.retrain writes (the API checks
# predictions against them in tpotserve_api.predict_request).
__all__ = ["extend_with_feedback", "feature_schema", "holdout_split", "load"]

FEEDBACK_ROWS_NAME = "feedback_rows.csv"
"""The labelled live rows a training added to its data set, stored in the version (hashed)."""


def load(datasets: DatasetStore, run: TrainingPayload) -> tuple[pd.DataFrame, pd.Series]:
    """The features and target of ``run``'s data set, re-checked (the queue is a trust boundary)."""
    if run.dataset_sha256 is not None and datasets.meta(run.dataset).get("sha256") != run.dataset_sha256:
        raise InvalidInput(f"dataset {run.dataset!r} is not the one the request was checked against")
    frame = datasets.frame(run.dataset)
    check_trainable(frame, run.target, run.task, run.cv, datasets.limits)
    return frame.drop(columns=[run.target]), frame[run.target]


def holdout_split(
    X: pd.DataFrame, y: pd.Series, run: TrainingPayload
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.Series]:
    """Keep ``holdout_fraction`` of the rows out of the search, for the promotion gate."""
    return train_test_split(
        X,
        y,
        test_size=run.holdout_fraction,
        stratify=y if run.task == "classification" else None,
        # A fixed seed unless the run has one: the same data gives the same holdout.
        random_state=run.random_state if run.random_state is not None else 0,
    )


def extend_with_feedback(X: pd.DataFrame, y: pd.Series, kept: list[bytes], run: TrainingPayload,
                         classes: list[Any] | None) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame]:
    """``X``, ``y`` with up to ``run.feedback_rows`` of the model's kept labelled live rows
    (``kept``: the newest first, as the API's feedback stored them) appended; and the rows
    added, with their target, for the version to keep. A row that does not fit the data set
    (other features, a non-finite value, a class the data set does not have) is left out:
    the data rules of an upload hold for live rows too."""
    added: list[dict[str, Any]] = []
    columns = list(X.columns)
    known = set(map(str, classes)) if classes is not None else None
    for raw in kept[: run.feedback_rows]:
        try:
            item = json.loads(raw)
            features = item["features"]
            row = {name: float(features[name]) for name in columns}
            target = item["target"]
        except (ValueError, KeyError, TypeError):
            continue
        if not all(math.isfinite(v) for v in row.values()):
            continue
        if run.task == "classification":
            if known is not None and str(target) not in known:
                continue
            target = _like(y, target)
        elif isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target):
            continue
        added.append({**row, run.target: target})
    rows = pd.DataFrame(added, columns=[*columns, run.target])
    if rows.empty:
        return X, y, rows
    X_all = pd.concat([X, rows[columns]], ignore_index=True)
    y_all = pd.concat([y, rows[run.target].astype(y.dtype)], ignore_index=True)
    return X_all, y_all.rename(y.name), rows


def _like(y: pd.Series, value: Any) -> Any:
    """A live label as the data set's labels are typed (feedback may send "1" for the class 1)."""
    for label in pd.unique(y):
        if str(label) == str(value):
            return label
    return value
