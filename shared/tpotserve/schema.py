"""Request shapes and validation shared by the API and the trainer.

Predictions are validated against the current model's feature schema (from
its meta.json); retrain requests against :class:`RetrainRequest` and the
server's caps. Both sides of the queue validate the same payload.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InvalidInput, MalformedBody
from .settings import Settings

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


def parse_json(raw: bytes) -> Any:
    """Parse a request body strictly: no NaN/Infinity, no pathological nesting."""
    if not raw:
        raise MalformedBody("the request body is empty; send a JSON object")
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
        rows = [
            _row(item, feature_names, prefix=f"instances[{i}].") for i, item in enumerate(instances)
        ]
        return PredictRequest(rows=rows, single=False, originals=instances)
    return PredictRequest(rows=[_row(body, feature_names, prefix="")], single=True, originals=[body])


FAR_OUTSIDE = 0.5
"""A value is reported when it lies beyond the training range by more than this share of the range."""


def range_warnings(rows: list[list[float]], features: list[dict[str, Any]], *, single: bool) -> list[dict[str, Any]]:
    """Values far outside what the model saw in training: reported, never refused."""
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
