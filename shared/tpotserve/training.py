"""From a retrain request to a queue payload: the checks both services agree on.

The API runs this before enqueueing, so bad data gets a 4xx and nothing is
queued; the trainer runs the data checks again on what it loads.
"""

from __future__ import annotations

from .datasets import DatasetStore, check_trainable
from .errors import InvalidInput, NotFound
from .schema import RetrainRequest, TrainingPayload, build_training_payload, check_caps
from .settings import Settings

BUNDLED_TARGETS = {"iris": "species"}


def plan_training(
    request: RetrainRequest, settings: Settings, datasets: DatasetStore, reason: str = "retrain"
) -> TrainingPayload:
    """Validate the request against its data set and the server's caps."""
    check_caps(request, settings)
    try:
        meta = datasets.meta(request.dataset)
    except NotFound as exc:
        raise InvalidInput(
            f"unknown dataset {request.dataset!r}; upload one with POST /datasets or use 'iris'",
            field="dataset",
        ) from exc
    target = request.target or BUNDLED_TARGETS.get(request.dataset)
    if target is None:
        raise InvalidInput("say which column to predict: \"target\": \"<column>\"", field="target")
    frame = datasets.frame(request.dataset)
    cv = request.cv or settings.tpot_cv
    task = check_trainable(frame, target, request.task, cv, datasets.limits)
    return build_training_payload(
        request, settings, target=target, task=task, dataset_sha256=meta.get("sha256"), reason=reason
    )
