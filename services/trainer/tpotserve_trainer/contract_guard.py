"""The trainer's side of a model's contract (tpotserve.contract): the queue is a trust
boundary and the current version may have changed since the API checked, so a training
and an activation are checked again here, against what is current when they run.

``jobs.retrain`` calls :func:`check_training` once its data is loaded (``_train``: so a
refused run costs no search) and again under the store's publish lock (``_publish``: so an
activation during the search cannot be silently undone); ``jobs.activate`` calls
:func:`check_activation` under the same lock.
"""

from __future__ import annotations

from typing import Any

from tpotserve.contract import Contract, contract_of, guard
from tpotserve.errors import TpotServeError
from tpotserve.schema import TrainingPayload
from tpotserve.store import ModelStore

from . import data

__all__ = ["check_activation", "check_training"]


def check_training(store: ModelStore, run: TrainingPayload, X: Any, y: Any, model: str) -> dict[str, Any]:
    """ContractConflict when this run would change the served contract without
    ``replace_contract``; otherwise the job result's ``contract`` entry: the new contract,
    the classes it adds, and whether it replaces the served contract."""
    classes = sorted({v.item() if hasattr(v, "item") else v for v in y.unique()}, key=str) \
        if run.task == "classification" else None
    new = Contract.build(((f["name"], f["type"]) for f in data.feature_schema(X)), run.target, run.task, classes)
    change = guard(_served(store), new, model=model, action="this training", replace=run.replace_contract)
    return {
        "contract": new.to_json(),
        "classes_added": list(change.classes_added) if change else [],
        "replaced": bool(change and change.breaking),
        "change": change.to_json() if change and not change.empty else None,
    }


def check_activation(store: ModelStore, version: str, model: str, replace: bool) -> None:
    """ContractConflict when activating ``version`` would change the served contract
    without ``replace`` (call under ``store.publishing()``)."""
    new = contract_of(store.read_meta(version))
    served = _served(store)
    if new is None or served is None or served.get("version") == version:
        return
    guard(served, new, model=model, action=f"activating {version}", replace=replace)


def _served(store: ModelStore) -> dict[str, Any] | None:
    pointer = store.read_pointer_quietly()
    if pointer is None:
        return None
    try:
        return store.read_meta(pointer.version)
    except TpotServeError:
        return None
