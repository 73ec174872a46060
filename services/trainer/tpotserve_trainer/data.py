"""Data sets in, (X, y) out."""

from __future__ import annotations

import pandas as pd
from sklearn.datasets import load_iris

from tpotserve.errors import InvalidInput

# The book's API names its features so; the product matches features by name.
IRIS_FEATURES = ["SepalLength", "SepalWidth", "PetalLength", "PetalWidth"]


def load(name: str, target: str) -> tuple[pd.DataFrame, pd.Series]:
    """The features and target of a data set known by name."""
    if name == "iris":
        frame = iris_frame()
    else:
        raise InvalidInput(f"unknown dataset {name!r}", field="dataset")
    if target not in frame.columns:
        raise InvalidInput(f"dataset {name!r} has no column {target!r}", field="target")
    return frame.drop(columns=[target]), frame[target]


def iris_frame() -> pd.DataFrame:
    """scikit-learn's iris with the book's API feature names and species names as target."""
    bunch = load_iris()
    frame = pd.DataFrame(bunch.data, columns=IRIS_FEATURES)
    frame["species"] = [str(bunch.target_names[i]) for i in bunch.target]
    return frame


def feature_schema(X: pd.DataFrame) -> list[dict]:
    """Names, order, types and observed ranges of the training features."""
    return [
        {
            "name": str(column),
            "type": "number",
            "min": float(X[column].min()),
            "max": float(X[column].max()),
        }
        for column in X.columns
    ]
