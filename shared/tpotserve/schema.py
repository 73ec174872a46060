"""Request shapes and validation shared by the API and the trainer.

Predictions are validated against the current model's feature schema (from
its meta.json); retrain requests against :class:`RetrainRequest` and the
server's caps. Both sides of the queue validate the same payload.
"""

from __future__ import annotations

import json
import math
import operator
from dataclasses import dataclass
from itertools import chain
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InvalidInput, MalformedBody
from .settings import Settings

try:  # pinned in requirements.lock; without it the standard library parses every body
    import orjson
except ImportError:  # pragma: no cover
    orjson = None

CLASSIFICATION_SCORERS = (
    "accuracy",
    "balanced_accuracy",
    "f1_macro",
    "f1_weighted",
    "roc_auc_ovr",
    "neg_log_loss",
)
REGRESSION_SCORERS = (
    "r2",
    "neg_mean_squared_error",
    "neg_root_mean_squared_error",
    "neg_mean_absolute_error",
)
DEFAULT_SCORER = {"classification": "accuracy", "regression": "r2"}


# --- JSON bodies -----------------------------------------------------------
def _reject_constant(name: str) -> float:
    # Python's json accepts NaN and Infinity; JSON does not, and a model cannot use them.
    raise InvalidInput(f"{name} is not a finite number", field=None)


# orjson reads integer literals beyond 64 bits as floats where json reads ints: a body
# with a run of 19 or more digits goes to json alone (found with one C-speed translate).
_DIGITS_AS_NINES = bytes(0x39 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_DIGIT_RUN = b"9" * 19


def _digit_runs(raw: bytes) -> bytes:
    """``raw`` with every digit as 9 and everything else as a space."""
    return raw.translate(_DIGITS_AS_NINES)


def parse_json(raw: bytes) -> Any:
    """Parse a request body strictly: no NaN/Infinity, no pathological nesting.

    orjson parses first (4x faster on a 10,000-row batch); on anything it refuses
    (NaN, 1e999, invalid UTF-8, deep nesting, any malformed body) the standard
    parser reads the body instead, so every refusal and its message come from one
    parser, whichever path a body takes.
    """
    if not raw:
        raise MalformedBody("the request body is empty; send a JSON object")
    if orjson is not None and isinstance(raw, bytes) and _LONG_DIGIT_RUN not in _digit_runs(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # json below finds the same problem and words the error
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedBody("the request body is not UTF-8") from exc
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError as exc:
        raise MalformedBody("the JSON body is nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise MalformedBody(f"the request body is not valid JSON: {exc}") from exc


# --- predictions -----------------------------------------------------------
@dataclass(frozen=True)
class PredictRequest:
    """A validated predict body: rows in the model's feature order."""

    rows: list[list[float]]
    single: bool
    """True for the book's one-object form, which gets the book's answer keys."""
    originals: list[dict[str, Any]]


def parse_predict(body: Any, feature_names: list[str], max_rows: int) -> PredictRequest:
    """Validate the book's single object or ``{"instances": [...]}`` against the schema."""
    if not isinstance(body, dict):
        raise InvalidInput(
            "the body must be a JSON object: one instance, or {\"instances\": [...]}",
            field=None,
        )
    if "instances" in body and "instances" not in feature_names:
        extra = sorted(set(body) - {"instances"})
        if extra:
            raise InvalidInput(f"unknown key {extra[0]!r} beside 'instances'", field=extra[0])
        instances = body["instances"]
        if not isinstance(instances, list):
            raise InvalidInput("'instances' must be a list of objects", field="instances")
        if not instances:
            raise InvalidInput("'instances' is empty", field="instances")
        if len(instances) > max_rows:
            raise InvalidInput(
                f"'instances' has {len(instances)} rows; the limit is {max_rows}", field="instances"
            )
        rows = _plain_rows(instances, feature_names)
        if rows is None:  # something is wrong: _row finds the first problem and names its field
            rows = [
                _row(item, feature_names, prefix=f"instances[{i}].") for i, item in enumerate(instances)
            ]
        return PredictRequest(rows=rows, single=False, originals=instances)
    rows = _plain_rows([body], feature_names) or [_row(body, feature_names, prefix="")]
    return PredictRequest(rows=rows, single=True, originals=[body])


def feature_schema(X: Any) -> list[dict[str, Any]]:
    """A model's ``features`` in meta.json: the name, order, type and observed range of each
    training column, from ``X`` (a DataFrame of the training features, in the model's order).

    The API checks predictions against it: the names (:func:`parse_predict`) and the ranges
    (:func:`range_warnings`).
    """
    return [
        {
            "name": str(column),
            "type": "number",
            "min": float(X[column].min()),
            "max": float(X[column].max()),
        }
        for column in X.columns
    ]


FAR_OUTSIDE = 0.5
"""A value is reported when it lies beyond the training range by more than this share of the range."""


def range_warnings(rows: list[list[float]], features: list[dict[str, Any]], *, single: bool) -> list[dict[str, Any]]:
    """Values far outside what the model saw in training: reported, never refused."""
    if _all_within_range(rows, features):
        return []
    warnings = []
    for index, row in enumerate(rows):
        for value, feature in zip(row, features):
            low, high = feature.get("min"), feature.get("max")
            if low is None or high is None:
                continue
            margin = FAR_OUTSIDE * (high - low)
            if value < low - margin or value > high + margin:
                name = feature["name"] if single else f"instances[{index}].{feature['name']}"
                warnings.append(
                    {
                        "code": "outside_training_range",
                        "field": name,
                        "message": f"{value} is far outside the training range [{low}, {high}]",
                    }
                )
    return warnings


MAX_MAGNITUDE = 3.4028234663852886e38
"""Largest |value| a feature may have: float32's range. Tree ensembles compute in
float32 and others overflow to NaN on values near float64's limit, so a larger
value is refused (422) rather than turned into a 500 or a meaningless answer."""


def _all_within_range(rows: list[list[float]], features: list[dict[str, Any]]) -> bool:
    """True when range_warnings has nothing to report, found column by column with min/max
    (C loops) instead of one Python comparison per value. False means: look value by value."""
    width = len(features)
    if not rows or set(map(len, rows)) != {width}:
        return not rows
    for column, feature in zip(zip(*rows), features):
        low, high = feature.get("min"), feature.get("max")
        if low is None or high is None:
            continue
        margin = FAR_OUTSIDE * (high - low)
        smallest, largest = min(column), max(column)
        if smallest != smallest or largest != largest:  # NaN first in the column hides the rest
            return False
        if smallest < low - margin or largest > high + margin:
            return False
    return True


def _plain_rows(items: list[Any], feature_names: list[str]) -> list[list[float]] | None:
    """Rows for instances that are exactly right, checked in C loops, not value by value.

    Every instance a plain dict with exactly the model's features (as many keys as
    features, and each feature found: so no other key); every value a plain float or
    int (never bool); no value NaN or infinite (one sum: any such value makes it
    non-finite). None at the first doubt: then _row checks value by value and raises
    the error, with its message and field, so an answer never depends on this shortcut.
    """
    width = len(feature_names)
    if width == 0 or len(set(feature_names)) != width:
        return None
    if set(map(type, items)) != {dict} or set(map(len, items)) != {width}:
        return None
    get = operator.itemgetter(*feature_names)
    try:
        picked = list(map(get, items))
    except KeyError:
        return None
    if width == 1:
        picked = [(value,) for value in picked]
    values = list(chain.from_iterable(picked))
    kinds = set(map(type, values))
    if not kinds <= {float, int}:
        return None  # bool, str, None, lists... (bool is its own type, not int, here)
    if int in kinds:
        try:
            values = list(map(float, values))
        except OverflowError:  # a JSON integer with hundreds of digits
            return None
        picked = [values[start : start + width] for start in range(0, len(values), width)]
    if not math.isfinite(sum(values)) or max(map(abs, values)) > MAX_MAGNITUDE:
        return None  # NaN, infinity or a huge value somewhere: _row names it
    return list(map(list, picked))


def _row(item: Any, feature_names: list[str], prefix: str) -> list[float]:
    if not isinstance(item, dict):
        raise InvalidInput("each instance must be a JSON object", field=prefix.rstrip(".") or None)
    for key in item:
        if key not in feature_names:
            raise InvalidInput(
                f"unknown feature {key!r}; the model expects {feature_names}", field=prefix + key
            )
    row = []
    for name in feature_names:
        if name not in item:
            raise InvalidInput(f"missing feature {name!r}", field=prefix + name)
        value = item[name]
        # bool is an int in Python; True is not a measurement.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidInput(
                f"feature {name!r} must be a number, got {type(value).__name__}",
                field=prefix + name,
            )
        try:
            value = float(value)
        except OverflowError:  # a JSON integer with hundreds of digits
            value = math.inf
        if not math.isfinite(value):
            raise InvalidInput(f"feature {name!r} must be a finite number", field=prefix + name)
        if abs(value) > MAX_MAGNITUDE:
            raise InvalidInput(
                f"feature {name!r} is {value:g}; values must lie within ±{MAX_MAGNITUDE:g}", field=prefix + name
            )
        row.append(value)
    return row


# --- retraining ------------------------------------------------------------
Task = Literal["classification", "regression"]
Promote = Literal["auto", "always", "never"]


class RetrainRequest(BaseModel):
    """The body of POST /retrain. Omitted budget fields take the server defaults."""

    model_config = ConfigDict(extra="forbid", strict=True)

    dataset: str = "iris"
    target: str | None = None
    task: Task | None = None
    max_time_mins: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    generations: int | None = Field(default=None, ge=1)
    population_size: int | None = Field(default=None, ge=2)
    cv: int | None = Field(default=None, ge=2)
    scoring: str | None = None
    promote: Promote = "auto"
    """auto: publish only if not worse than the current model on the holdout; always; never."""
    queue: bool = False
    """Queue behind a running training instead of answering 409."""


class TrainingPayload(BaseModel):
    """What travels through the queue: a complete, explicit training run."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    dataset_sha256: str | None = None
    target: str
    task: Task
    max_time_mins: float
    generations: int
    population_size: int
    cv: int
    scoring: str
    n_jobs: int
    random_state: int | None = None
    holdout_fraction: float = 0.2
    promote: Promote = "auto"
    model_keep: int = 10
    reason: str = "retrain"


def parse_retrain_request(body: Any) -> RetrainRequest:
    """Shape and types of a retrain body; InvalidInput names the first bad field."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object", field=None)
    try:
        return RetrainRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        raise InvalidInput(f"{field}: {first['msg']}", field=field) from exc


def check_caps(request: RetrainRequest, settings: Settings) -> None:
    """Refuse budget values above what this server allows."""
    caps = {
        "max_time_mins": settings.max_time_mins_cap,
        "generations": settings.generations_cap,
        "population_size": settings.population_size_cap,
        "cv": settings.cv_cap,
    }
    for name, cap in caps.items():
        value = getattr(request, name)
        if value is not None and value > cap:
            raise InvalidInput(f"{name} is {value}; this server allows at most {cap}", field=name)


def build_training_payload(
    request: RetrainRequest,
    settings: Settings,
    *,
    target: str,
    task: str,
    dataset_sha256: str | None = None,
    reason: str = "retrain",
) -> TrainingPayload:
    """Apply the server's caps and defaults to a request whose data was already checked."""
    check_caps(request, settings)
    scorers = CLASSIFICATION_SCORERS if task == "classification" else REGRESSION_SCORERS
    scoring = request.scoring or DEFAULT_SCORER[task]
    if scoring not in scorers:
        raise InvalidInput(
            f"scoring {scoring!r} is not available for {task}; choose one of {list(scorers)}",
            field="scoring",
        )
    return TrainingPayload(
        dataset=request.dataset,
        dataset_sha256=dataset_sha256,
        target=target,
        task=task,
        max_time_mins=request.max_time_mins or settings.tpot_max_time_mins,
        generations=request.generations or settings.tpot_generations,
        population_size=request.population_size or settings.tpot_population_size,
        cv=request.cv or settings.tpot_cv,
        scoring=scoring,
        n_jobs=settings.tpot_n_jobs,
        random_state=settings.tpot_random_state,
        holdout_fraction=settings.holdout_fraction,
        promote=request.promote,
        model_keep=settings.model_keep,
        reason=reason,
    )
