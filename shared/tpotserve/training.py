"""From a retrain request to a queue payload: the checks both services agree on.

The API runs this before enqueueing, so bad data gets a 4xx and nothing is
queued; the trainer runs the data checks again on what it loads.
"""

from __future__ import annotations

from typing import Any

from .contract import Contract, guard
from .datasets import DEFAULT_DATASET, DatasetStore, check_trainable
from .errors import InvalidInput, NotFound, TpotServeError
from .schema import RetrainRequest, TrainingPayload, build_training_payload, check_caps, effective_cv
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
    A data set that would change the contract of the model's current version (its
    features, target, task, or remove classes) is a ContractConflict (409) unless the
    request says ``replace_contract``.
    """
    check_caps(request, settings)
    served = _current_meta(store)
    previous = {key: served.get(key) for key in ("dataset", "target", "task") if isinstance(served.get(key), str)}
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
    task = check_trainable(frame, target, task, effective_cv(request, settings), datasets.limits)
    guard(served or None, planned_contract(frame, target, task), model=request.model or settings.model_name,
          action="this training", replace=request.replace_contract)
    return build_training_payload(
        request, settings, target=target, task=task, dataset_sha256=meta.get("sha256"), reason=reason,
        dataset=dataset,
    )


def planned_contract(frame: Any, target: str, task: str) -> Contract:
    """The contract a training on ``frame`` gives: every other column a numeric feature (the
    data rules refuse anything else), in the data set's order; the target's labels as classes."""
    y = frame[target]
    classes = [c.item() if hasattr(c, "item") else c for c in y.unique()] if task == "classification" else None
    features = [(str(column), "number") for column in frame.columns if column != target]
    return Contract.build(features, target, task, sorted(classes, key=str) if classes is not None else None)


def _current_meta(store: ModelStore | None) -> dict:
    """The metadata of the store's current version; {} when there is none."""
    pointer = store.read_pointer_quietly() if store is not None else None
    if pointer is None:
        return {}
    try:
        meta = store.read_meta(pointer.version)
    except TpotServeError:
        return {}
    return meta if isinstance(meta, dict) else {}
