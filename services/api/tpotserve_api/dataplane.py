"""The data plane: which model a request names, and inference on it, free of any protocol.

The HTTP adapters (``resources.py`` for the JSON API, ``v2.py`` for the Open Inference
Protocol, ``documents.py``) parse their own bodies and shape their own answers; between
those steps they call here, so the name-to-404 rule, the served-version check and what
happens around every inference (metrics) exist once. The split follows Seldon
MLServer's ``dataplane`` beside its ``rest`` adapters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tpotserve.errors import InvalidInput, NotFound
from tpotserve.names import check_model_name
from tpotserve.store import ModelStore

from . import metrics
from .context import ctx
from .loaded_model import LoadedModel


def model_name(name: str) -> str:
    """A model name from a URL: one that cannot name a model names none (404, as an unknown one)."""
    try:
        return check_model_name(name, field="name")
    except InvalidInput as exc:
        raise NotFound(f"no model named {name[:100]!r}; GET /registry lists them", field="name") from exc


def existing_store(name: str) -> ModelStore:
    """The store of an existing model named in a URL; 404 for an unknown (or impossible) name."""
    return ctx().registry.existing_store(model_name(name))


def served(name: str | None, version: str | None = None) -> LoadedModel:
    """The model this worker serves under ``name`` (None: the default model), and of it
    ``version`` if one is given; NotFound for an unknown name or another version."""
    model = ctx().models.get(model_name(name) if name is not None else None)
    if version is not None and version != model.version:
        raise NotFound(
            f"model {model.name!r} version {version[:100]!r} is not served; "
            f"the served version is {model.version!r}",
            field="version",
        )
    return model


@dataclass(frozen=True)
class Inference:
    """One inference's answer: predictions (class names or numbers), and for a classifier with
    ``predict_proba`` the probability matrix, its columns in ``model.meta.classes`` order."""

    model: LoadedModel
    predictions: list[Any]
    proba: np.ndarray | None


def infer(model: LoadedModel, X: np.ndarray, prediction_id: str) -> Inference:
    """Predict the validated float matrix ``X`` (the model's feature order), count it in the
    metrics and the drift bins, and keep the answers under ``prediction_id`` for feedback; then
    hand a sample of the rows to the shadow runner (a queue put, never a wait)."""
    predictions, proba = model.infer(X)
    metrics.record_predictions(model.name, model.version, predictions, model.is_classifier)
    context = ctx()
    context.monitor.record(model, X, predictions, prediction_id)
    context.shadows.offer(model, X, predictions, prediction_id)
    return Inference(model, predictions, proba)
