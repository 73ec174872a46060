"""Training data: uploaded CSVs on the data volume, the bundled iris, and the rules
a data set must meet before anything is enqueued.

    <datasets>/<id>/data.csv    the upload, byte for byte
    <datasets>/<id>/meta.json   sha256, rows, columns with inferred types, preview

A data set's id is derived from its content (``ds-`` + 12 hex of its sha256),
so uploading the same file twice gives the same id. The API validates
uploads and retrain requests; the trainer loads frames by id. Both use this
module, so the rules cannot drift.

Data rules (also in docs/api.md, "Data rules"):
- UTF-8 (a BOM is allowed), comma-separated, a header row with unique, non-empty names.
- At least two columns and ``MIN_TRAINING_ROWS`` data rows; at most the configured caps.
- Feature columns must be numeric; text columns are refused with their name
  (encode them as numbers first). No missing values in the columns used;
  no infinities anywhere.
- Task inference when the request does not say: a non-numeric target, or an
  integer target with at most ``MAX_CLASSES_FOR_INFERENCE`` distinct values,
  is classification; any other numeric target is regression.
- Classification needs at least two classes, and each class enough rows to
  appear in every CV fold after the holdout split (``min_rows_per_class``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .atomic import new_directory, sha256_file, write_new_file
from .clock import utc_iso
from .errors import InvalidInput, NotFound
from .names import DATASET_DATA_NAME, DATASET_META_NAME
from .settings import Settings

DATA_NAME = DATASET_DATA_NAME
META_NAME = DATASET_META_NAME
DEFAULT_DATASET = "iris"
"""The bundled data set: what a model without a data set of its own trains on."""
BUNDLED = (DEFAULT_DATASET,)
IRIS_FEATURES = ["SepalLength", "SepalWidth", "PetalLength", "PetalWidth"]
MAX_CLASSES_FOR_INFERENCE = 20
PREVIEW_ROWS = 5


@dataclass(frozen=True)
class DataLimits:
    """The caps and minimums a data set must meet (from Settings)."""

    max_rows: int
    max_columns: int
    min_rows: int
    holdout_fraction: float


    @classmethod
    def from_settings(cls, settings: Settings) -> DataLimits:
        return cls(
            max_rows=settings.dataset_max_rows,
            max_columns=settings.dataset_max_columns,
            min_rows=settings.min_training_rows,
            holdout_fraction=settings.holdout_fraction,
        )


def iris_frame() -> pd.DataFrame:
    """scikit-learn's iris with the book's API feature names and species names as target."""
    from sklearn.datasets import load_iris  # local: only needed when iris is used

    bunch = load_iris()
    frame = pd.DataFrame(bunch.data, columns=IRIS_FEATURES)
    frame["species"] = [str(bunch.target_names[i]) for i in bunch.target]
    return frame


def min_rows_per_class(cv: int, holdout_fraction: float) -> int:
    """Rows a class needs so that, after a stratified holdout split, every CV fold sees it."""
    # The training part keeps at least n - ceil(n * holdout) rows of a class of n.
    n = cv
    while n - math.ceil(n * holdout_fraction) < cv:
        n += 1
    return n


# --- parsing an upload -------------------------------------------------------
def parse_csv(raw: bytes, limits: DataLimits) -> pd.DataFrame:
    """Parse and check an uploaded CSV's structure; InvalidInput names the problem."""
    text = _text(raw)
    names = _header(text, limits)
    try:
        frame = pd.read_csv(
            io.StringIO(text),
            header=0,
            names=names,
            # A row with an extra field must not turn the first column into an index.
            index_col=False,
            skipinitialspace=True,
            nrows=limits.max_rows + 1,
            na_values=["", "NA", "NaN", "nan", "null", "NULL", "None"],
            keep_default_na=False,
        )
    except (pd.errors.ParserError, ValueError) as exc:
        raise InvalidInput(f"the file is not valid CSV: {exc}", field="file") from exc
    if len(frame) == 0:
        raise InvalidInput("the file has a header but no data rows", field="file")
    if len(frame) > limits.max_rows:
        raise InvalidInput(f"the file has more than {limits.max_rows} rows, this server's cap", field="file")
    for name in frame.columns:
        column = frame[name]
        if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
            values = column.to_numpy(dtype=float, na_value=np.nan)
            if np.isinf(values).any():
                raise InvalidInput(f"column {name!r} contains an infinite number", field=name)
    return frame


def _text(raw: bytes) -> str:
    """The upload as text: not empty, UTF-8 (a BOM is dropped), not binary."""
    if not raw.strip():
        raise InvalidInput("the file is empty", field="file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"the file is not UTF-8 text (byte {exc.start})", field="file") from exc
    if "\x00" in text:
        raise InvalidInput("the file is binary, not CSV", field="file")
    return text


def _header(text: str, limits: DataLimits) -> list[str]:
    """The column names, checked (count, present, unique), and no row with more fields than they."""
    try:
        reader = csv.reader(io.StringIO(text))
        header = next(reader)
        # pandas would shift a row with an extra field (or drop the field): refuse it.
        for line, row in enumerate(reader, start=2):
            if len(row) > len(header):
                raise InvalidInput(
                    f"line {line} has {len(row)} fields but the header names {len(header)} columns",
                    field="file",
                )
    except (csv.Error, StopIteration) as exc:
        raise InvalidInput(f"the file is not CSV: {exc}", field="file") from exc
    names = [name.strip() for name in header]
    if len(names) > limits.max_columns:
        raise InvalidInput(
            f"the file has {len(names)} columns; this server accepts at most {limits.max_columns}", field="file"
        )
    if len(names) < 2:
        raise InvalidInput("a training set needs at least two columns (features and a target)", field="file")
    for index, name in enumerate(names):
        if not name:
            raise InvalidInput(f"column {index + 1} has no name in the header row", field="file")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InvalidInput(f"column {name!r} appears twice in the header row", field=name)
        seen.add(name)
    return names


def describe_columns(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Inferred type, missing count and distinct count of each column."""
    described = []
    for name in frame.columns:
        column = frame[name]
        if pd.api.types.is_bool_dtype(column):
            kind = "boolean"
        elif pd.api.types.is_integer_dtype(column):
            kind = "integer"
        elif pd.api.types.is_numeric_dtype(column):
            kind = "number"
        else:
            kind = "string"
        entry: dict[str, Any] = {
            "name": str(name),
            "type": kind,
            "missing": int(column.isna().sum()),
            "distinct": int(column.nunique(dropna=True)),
        }
        if kind in ("integer", "number"):
            entry["min"] = _json_number(column.min())
            entry["max"] = _json_number(column.max())
        described.append(entry)
    return described


def _json_number(value: Any) -> float | int | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def preview(frame: pd.DataFrame, rows: int = PREVIEW_ROWS) -> list[dict[str, Any]]:
    head = frame.head(rows).astype(object).where(frame.head(rows).notna(), None)
    return [{str(k): _json_number(v) for k, v in record.items()} for record in head.to_dict("records")]


# --- checking a retrain request against the data -----------------------------
def infer_task(target: pd.Series) -> str:
    """classification for labels, regression for measurements (see the module's rules)."""
    if pd.api.types.is_bool_dtype(target) or not pd.api.types.is_numeric_dtype(target):
        return "classification"
    values = target.dropna()
    integral = pd.api.types.is_integer_dtype(values) or bool((values == values.round()).all())
    if integral and values.nunique() <= MAX_CLASSES_FOR_INFERENCE:
        return "classification"
    return "regression"


def check_trainable(
    frame: pd.DataFrame, target: str, task: str | None, cv: int, limits: DataLimits
) -> str:
    """Refuse data that cannot train, naming the problem; returns the task to run."""
    if target not in frame.columns:
        raise InvalidInput(
            f"the data set has no column {target!r}; columns: {[str(c) for c in frame.columns]}", field="target"
        )
    if len(frame) < limits.min_rows:
        raise InvalidInput(
            f"the data set has {len(frame)} rows; training needs at least {limits.min_rows}", field="dataset"
        )
    y = frame[target]
    if y.isna().any():
        raise InvalidInput(f"the target {target!r} has {int(y.isna().sum())} missing values", field="target")
    _check_features(frame, target)
    resolved = task or infer_task(y)
    if resolved == "regression":
        if not pd.api.types.is_numeric_dtype(y) or pd.api.types.is_bool_dtype(y):
            raise InvalidInput(f"regression needs a numeric target; {target!r} is not numeric", field="task")
        if y.nunique() < 2:
            raise InvalidInput(f"the target {target!r} has a single value; nothing to learn", field="target")
        return resolved
    _check_classes(y, target, cv, limits)
    return resolved


def _check_features(frame: pd.DataFrame, target: str) -> None:
    """Every column but the target numeric (not bool) and complete."""
    for name in frame.columns:
        if name == target:
            continue
        column = frame[name]
        if pd.api.types.is_bool_dtype(column) or not pd.api.types.is_numeric_dtype(column):
            raise InvalidInput(
                f"feature column {name!r} is not numeric; encode it as numbers (or drop it) and upload again",
                field=str(name),
            )
        missing = int(column.isna().sum())
        if missing:
            raise InvalidInput(
                f"feature column {name!r} has {missing} missing values; fill or drop them and upload again",
                field=str(name),
            )


def _check_classes(y: pd.Series, target: str, cv: int, limits: DataLimits) -> None:
    """Two classes or more, each with enough rows for the stratified holdout and every CV fold."""
    counts = y.astype(str).value_counts()
    if len(counts) < 2:
        raise InvalidInput(
            f"the target {target!r} has one class ({counts.index[0]!r}); classification needs two or more",
            field="target",
        )
    holdout_rows = math.ceil(len(y) * limits.holdout_fraction)
    if holdout_rows < len(counts):
        raise InvalidInput(
            f"{len(counts)} classes need a holdout of at least {len(counts)} rows; "
            f"{len(y)} rows give {holdout_rows} ({limits.holdout_fraction:.0%}): add rows or merge classes",
            field="target",
        )
    needed = min_rows_per_class(cv, limits.holdout_fraction)
    rare = counts[counts < needed]
    if len(rare):
        label, count = rare.index[0], int(rare.iloc[0])
        raise InvalidInput(
            f"class {label!r} of {target!r} has {count} rows; with cv={cv} and a "
            f"{limits.holdout_fraction:.0%} holdout each class needs at least {needed}",
            field="target",
        )


# --- the store ---------------------------------------------------------------
def dataset_id_for(sha256: str) -> str:
    return f"ds-{sha256[:12]}"


class DatasetStore:
    """Uploaded data sets on the data volume, plus the bundled ones by name."""

    def __init__(self, root: Path, limits: DataLimits) -> None:
        self.root = Path(root)
        self.limits = limits

    @classmethod
    def from_settings(cls, settings: Settings) -> DatasetStore:
        return cls(settings.dataset_dir, DataLimits.from_settings(settings))

    def save(self, raw: bytes, filename: str | None = None) -> tuple[dict[str, Any], bool]:
        """Validate and store an upload; returns (meta, created) — False when it was already stored."""
        frame = parse_csv(raw, self.limits)
        sha = hashlib.sha256(raw).hexdigest()
        dataset_id = dataset_id_for(sha)
        final = self.root / dataset_id
        if (final / META_NAME).exists():
            return self.meta(dataset_id), False
        meta = {
            "id": dataset_id,
            "sha256": sha,
            "filename": filename,
            "bytes": len(raw),
            "rows": int(len(frame)),
            "columns": describe_columns(frame),
            "preview": preview(frame),
            "created_at": utc_iso(),
        }
        try:
            with new_directory(final) as tmp:
                write_new_file(tmp / DATA_NAME, raw)
                write_new_file(tmp / META_NAME, json.dumps(meta, indent=2).encode())
        except OSError:
            if (final / META_NAME).exists():  # a concurrent upload of the same bytes won the rename
                return self.meta(dataset_id), False
            raise
        return meta, True

    def list(self) -> list[dict[str, Any]]:
        uploads = []
        if self.root.is_dir():
            for entry in sorted(self.root.iterdir()):
                if entry.name.startswith(".") or not (entry / META_NAME).exists():
                    continue
                meta = self.meta(entry.name)
                uploads.append({k: v for k, v in meta.items() if k != "preview"})
        return [*(self.meta(name) for name in BUNDLED), *uploads]

    def meta(self, dataset_id: str) -> dict[str, Any]:
        if dataset_id == "iris":
            frame = iris_frame()
            return {
                "id": "iris",
                "bundled": True,
                "target": "species",
                "rows": len(frame),
                "columns": describe_columns(frame),
                "preview": preview(frame),
            }
        path = self._dir(dataset_id) / META_NAME
        try:
            return json.loads(path.read_text())
        except OSError as exc:  # missing, or a name the filesystem cannot even hold
            raise NotFound(f"no dataset {dataset_id!r}", field="dataset") from exc

    def frame(self, dataset_id: str) -> pd.DataFrame:
        """The data set as a DataFrame, re-checked against its recorded sha256."""
        if dataset_id == "iris":
            return iris_frame()
        meta = self.meta(dataset_id)
        path = self._dir(dataset_id) / DATA_NAME
        if sha256_file(path) != meta["sha256"]:
            raise InvalidInput(f"dataset {dataset_id!r} changed on disk since upload", field="dataset")
        return parse_csv(path.read_bytes(), self.limits)

    def _dir(self, dataset_id: str) -> Path:
        if (
            not dataset_id
            or len(dataset_id) > 100
            or "/" in dataset_id
            or dataset_id.startswith(".")
            or "\x00" in dataset_id
        ):
            raise NotFound(f"no dataset {dataset_id[:100]!r}", field="dataset")
        return self.root / dataset_id


__all__ = [
    "DataLimits",
    "DatasetStore",
    "check_trainable",
    "infer_task",
    "iris_frame",
    "min_rows_per_class",
    "parse_csv",
]
