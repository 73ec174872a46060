"""From a retrain request to a queue payload: the checks both services agree on.

The API runs this before enqueueing, so bad data gets a 4xx and nothing is
queued; the trainer runs the data checks again on what it loads.
"""

from __future__ import annotations

from .datasets import DEFAULT_DATASET, DatasetStore, check_trainable
from .errors import InvalidInput, NotFound, TpotServeError
from .schema import RetrainRequest, TrainingPayload, build_training_payload, check_caps
from .settings import Settings
from .store import ModelStore

BUNDLED_TARGETS = {DEFAULT_DATASET: "species"}


def plan_training(
    request: RetrainRequest,
    settings: Settings,
    datasets: DatasetStore,
    reason: str = "retrain",
    store: ModelStore | None = None,
) -> TrainingPayload:
    """Validate the request against its data set and the server's caps.

    ``store``: the named model's store. A request that names no data set retrains the
    model on what its current version was trained on (data set, target, task), so
    ``{"model": "housing"}`` alone retrains housing; a model with none gets iris.
    """
    check_caps(request, settings)
    previous = _current_training(store)
    dataset = request.dataset or previous.get("dataset") or DEFAULT_DATASET
    try:
        meta = datasets.meta(dataset)
    except NotFound as exc:
        raise InvalidInput(
            f"unknown dataset {dataset!r}; upload one with POST /datasets or use {DEFAULT_DATASET!r}",
            field="dataset",
        ) from exc
    same_data = previous.get("dataset") == dataset
    target = request.target or (previous.get("target") if same_data else None) or BUNDLED_TARGETS.get(dataset)
    if target is None:
        raise InvalidInput("say which column to predict: \"target\": \"<column>\"", field="target")
    task = request.task or (previous.get("task") if same_data and previous.get("target") == target else None)
    frame = datasets.frame(dataset)
    cv = request.cv or settings.tpot_cv
    task = check_trainable(frame, target, task, cv, datasets.limits)
    return build_training_payload(
        request, settings, target=target, task=task, dataset_sha256=meta.get("sha256"), reason=reason,
        dataset=dataset,
    )


def _current_training(store: ModelStore | None) -> dict:
    """Data set, target and task of the store's current version; {} when there is none."""
    pointer = store.read_pointer_quietly() if store is not None else None
    if pointer is None:
        return {}
    try:
        meta = store.read_meta(pointer.version)
    except TpotServeError:
        return {}
    return {key: meta.get(key) for key in ("dataset", "target", "task") if isinstance(meta.get(key), str)}
