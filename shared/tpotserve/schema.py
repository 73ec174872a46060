"""Request shapes and validation shared by the API and the trainer: retrain requests
against :class:`RetrainRequest` and the server's caps (both sides of the queue validate the
same payload), and the feature schema the trainer writes and the API checks against.

Prediction bodies are the API's alone: ``tpotserve_api.predict_request``.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InvalidInput
from .datasets import DEFAULT_DATASET
from .names import check_model_name
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
DESCRIPTION_MAX_CHARS = 2000
DEFAULT_SCORER = {"classification": "accuracy", "regression": "r2"}


def feature_schema(X: Any) -> list[dict[str, Any]]:
    """A model's ``features`` in meta.json: the name, order, type and observed range of each
    training column, from ``X`` (a DataFrame of the training features, in the model's order).

    The API checks predictions against it: the names and the ranges
    (``tpotserve_api.predict_request``).
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


# --- retraining ------------------------------------------------------------
Task = Literal["classification", "regression"]
Promote = Literal["auto", "always", "never"]


class RetrainRequest(BaseModel):
    """The body of POST /retrain. Omitted budget fields take the server defaults."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    """Which named model to train a new version of; the default model (MODEL_NAME) when omitted."""
    dataset: str | None = None
    """Omitted: the data set (and target and task) the model's current version was trained on,
    or the bundled iris for a model that has none."""
    target: str | None = None
    task: Task | None = None
    max_time_mins: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    generations: int | None = Field(default=None, ge=1)
    population_size: int | None = Field(default=None, ge=2)
    cv: int | None = Field(default=None, ge=2)
    scoring: str | None = None
    random_state: int | None = Field(default=None, ge=0, le=2**32 - 1)
    """Seed of the search, the baselines and the CV folds, for a reproducible run; omitted: TPOT_RANDOM_STATE."""
    promote: Promote = "auto"
    """auto: publish only if not worse than the current model on the holdout; always; never."""
    queue: bool = False
    """Queue behind a running training instead of answering 409."""
    baselines: bool = True
    """Fit scikit-learn's defaults beside the search and publish the best by CV score."""
    description: str | None = Field(default=None, max_length=DESCRIPTION_MAX_CHARS)
    """Free text for the version's model card."""
    replace_contract: bool = False
    """Train even though the data set changes the model's contract (features, target, task,
    removed classes): tpotserve.contract. Otherwise such a training is a 409."""


class TrainingPayload(BaseModel):
    """What travels through the queue: a complete, explicit training run."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    """The named model this run trains; None (a job enqueued before named models): the default."""
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
    baselines: bool = True
    description: str | None = None
    replace_contract: bool = False
    """The request's override: the trainer may replace the model's contract."""
    trigger: dict[str, Any] | None = None
    """Why an automatic training runs (the scheduler's: kind schedule | drift | quality | feedback,
    with the figures that fired it); None for a training someone asked for."""
    feedback_rows: int = 0
    """Extend the data set with up to this many of the model's kept labelled live rows."""


class ActivateRequest(BaseModel):
    """The optional body of POST .../activate."""

    model_config = ConfigDict(extra="forbid", strict=True)

    replace_contract: bool = False
    """Activate even a version whose contract differs from the served one's."""


def first_error(exc: ValidationError) -> tuple[str | None, str]:
    """(the dotted path of the first bad field or None, pydantic's message): what a 422 names."""
    first = exc.errors()[0]
    return ".".join(str(part) for part in first["loc"]) or None, first["msg"]


Schema = TypeVar("Schema", bound=BaseModel)


def validated(schema: type[Schema], body: Any, *, not_object: str = "the body must be a JSON object",
              prefix: str = "") -> Schema:
    """A JSON body as ``schema``; InvalidInput (422) naming the first bad field (under ``prefix``)."""
    if not isinstance(body, dict):
        raise InvalidInput(not_object, field=None)
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        field, message = first_error(exc)
        label = f"{prefix}.{field}" if prefix and field else (prefix or f"{field}")
        raise InvalidInput(f"{label}: {message}", field=field) from None


def parse_activate_request(body: Any, query: str | None = None) -> ActivateRequest:
    """An activate's body (None: none) and its ``?replace_contract=`` (true/false, 1/0)."""
    request = validated(ActivateRequest, {} if body is None else body)
    if query is not None:
        flags = {"true": True, "1": True, "false": False, "0": False}
        if query.lower() not in flags:
            raise InvalidInput("replace_contract: send true or false", field="replace_contract")
        request = ActivateRequest(replace_contract=request.replace_contract or flags[query.lower()])
    return request


def parse_retrain_request(body: Any) -> RetrainRequest:
    """Shape and types of a retrain body; InvalidInput names the first bad field."""
    request = validated(RetrainRequest, {} if body is None else body)
    if request.model is not None:
        check_model_name(request.model)
    return request


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


def effective_cv(request: RetrainRequest, settings: Settings) -> int:
    """The CV folds a training uses: the request's, else TPOT_CV."""
    return request.cv or settings.tpot_cv


def build_training_payload(
    request: RetrainRequest,
    settings: Settings,
    *,
    target: str,
    task: str,
    dataset_sha256: str | None = None,
    reason: str = "retrain",
    dataset: str | None = None,
) -> TrainingPayload:
    """Apply the server's defaults to a request already checked against its caps (``check_caps``)
    and its data (``training.plan_training`` does both, caps first).
    ``dataset``: the data set it trains on when the request names none."""
    scorers = CLASSIFICATION_SCORERS if task == "classification" else REGRESSION_SCORERS
    scoring = request.scoring or DEFAULT_SCORER[task]
    if scoring not in scorers:
        raise InvalidInput(
            f"scoring {scoring!r} is not available for {task}; choose one of {list(scorers)}",
            field="scoring",
        )
    return TrainingPayload(
        model=request.model or settings.model_name,
        dataset=request.dataset or dataset or DEFAULT_DATASET,
        dataset_sha256=dataset_sha256,
        target=target,
        task=task,
        max_time_mins=request.max_time_mins or settings.tpot_max_time_mins,
        generations=request.generations or settings.tpot_generations,
        population_size=request.population_size or settings.tpot_population_size,
        cv=effective_cv(request, settings),
        scoring=scoring,
        n_jobs=settings.tpot_n_jobs,
        random_state=request.random_state if request.random_state is not None else settings.tpot_random_state,
        holdout_fraction=settings.holdout_fraction,
        promote=request.promote,
        model_keep=settings.model_keep,
        reason=reason,
        baselines=request.baselines,
        description=request.description,
        replace_contract=request.replace_contract,
    )
