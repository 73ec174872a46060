"""Data sets in, (X, y) out, with the same checks the API ran before enqueueing."""

from __future__ import annotations

import pandas as pd
from sklearn.model_selection import train_test_split

from tpotserve.datasets import DatasetStore, check_trainable
from tpotserve.errors import InvalidInput
from tpotserve.schema import TrainingPayload, feature_schema

# feature_schema: the features of the meta.json jobs.retrain writes (the API checks
# predictions against them in tpotserve_api.predict_request).
__all__ = ["feature_schema", "holdout_split", "load"]


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
