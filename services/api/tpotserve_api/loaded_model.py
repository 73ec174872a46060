"""A verified model as the API answers with it: predictions, probabilities, class names."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from tpotserve.drift import Binner
from tpotserve.errors import InvalidInput
from tpotserve.model_meta import ModelMeta
from tpotserve.store import Pointer

from . import metrics
from .compiled import CompiledEngine, within_float32
from .fast_path import checked_once

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A verified model and what the API needs to answer with it."""

    pointer: Pointer
    meta: ModelMeta
    model: Any
    loaded_at: float = field(default_factory=time.time)
    fast_proba: Callable[[np.ndarray], np.ndarray | None] | None = field(default=None, repr=False)
    """A shortcut for ``model.predict_proba``, checked at load to give identical answers
    (:func:`tpotserve_api.fast_path.compile_fast_proba`); None: scikit-learn's own call."""
    name: str = ""
    """The named model this is a version of."""
    binner: Binner | None = field(default=None, repr=False)
    """The version's drift bins (``tpotserve.drift``); None when it has no reference profile."""
    compiled: CompiledEngine | None = field(default=None, repr=False)
    """The verified ONNX Runtime engine (``tpotserve_api.compiled``) and the sizes it answers;
    None: the pipeline's own path for every request."""
    serving: dict[str, Any] = field(default_factory=dict)
    """Which engine serves, why (a fallback's reason) and the load-time timings: GET /models/<name>'s
    ``serving``."""

    @property
    def version(self) -> str:
        return self.pointer.version

    @cached_property
    def feature_names(self) -> list[str]:
        return self.meta.feature_names

    @cached_property
    def feature_schema(self) -> list[dict[str, Any]]:
        """meta.json's ``features`` as JSON, which predict_request.range_warnings reads."""
        return [feature.model_dump() for feature in self.meta.features]

    @property
    def is_classifier(self) -> bool:
        return self.meta.is_classifier

    def predict(self, rows: list[list[float]]) -> tuple[list[Any], list[dict[str, float]] | None]:
        """Predictions (class names or numbers) and, for classifiers, class probabilities
        as ``{class name: probability}`` per row (the JSON API's shape).

        ``rows`` were validated by predict_request.parse_predict (finite numbers, the
        model's feature order), so scikit-learn's own per-call finiteness checks are skipped.
        """
        predictions, proba = self.infer(np.asarray(rows, dtype=float))
        return predictions, self.probability_dicts(proba)

    def probability_dicts(self, proba: np.ndarray | None) -> list[dict[str, float]] | None:
        """``infer``'s probability matrix as ``{class name: probability}`` per row."""
        if proba is None:
            return None
        names = self._class_names
        # tolist(): plain floats in one C loop, not one numpy scalar per value.
        return [dict(zip(names, row)) for row in proba.tolist()]

    def infer(self, X: np.ndarray) -> tuple[list[Any], np.ndarray | None]:
        """The protocol-free step every adapter (JSON API, V2) calls: predictions for the
        validated float matrix ``X`` and, for a classifier with ``predict_proba``, the
        probability matrix, its columns in ``meta.classes`` order.

        The compiled engine answers when it was verified and is the faster at this size, and
        the input is within float32's range; otherwise (and when its result is not finite)
        the pipeline's own path, so every refusal is scikit-learn's own."""
        engine = self.compiled
        if engine is not None and len(X) <= engine.max_rows and within_float32(X):
            answer = self._infer_compiled(engine, X)
            if answer is not None:
                metrics.record_engine(self.name, "onnxruntime")
                return answer
        metrics.record_engine(self.name, "scikit-learn")
        return self.infer_pipeline(X)

    def _infer_compiled(self, engine: CompiledEngine, X: np.ndarray) -> tuple[list[Any], np.ndarray | None] | None:
        """The compiled engine's answer shaped as ``infer_pipeline``'s; None when not finite, or
        when ONNX Runtime fails (the pipeline then answers, or refuses, as it would have)."""
        try:
            out = engine.run(X)
        except Exception:  # noqa: BLE001 - never a 500 the pipeline would not have given
            log.exception("model %s version %s: the compiled engine failed; the pipeline answers",
                          self.name, self.version)
            return None
        if not self.is_classifier:
            values = np.asarray(out[0], dtype=float).ravel()
            return (values.tolist(), None) if np.isfinite(values).all() else None
        classes = self.meta.classes or []
        if hasattr(self.model, "predict_proba"):
            if len(out) < 2:
                return None
            proba = np.asarray(out[1], dtype=float)
            if not np.isfinite(proba).all():
                return None
            return [classes[i] for i in proba.argmax(axis=1).tolist()], proba
        model_classes = list(getattr(self.model, "classes_", range(len(classes))))
        return [classes[model_classes.index(v)] for v in np.asarray(out[0]).ravel().tolist()], None

    def infer_pipeline(self, X: np.ndarray) -> tuple[list[Any], np.ndarray | None]:
        """``infer`` on the pipeline's own path (the fast path where it was verified)."""
        if not self.is_classifier:
            values = checked_once(self.model.predict, X)
            if not np.isfinite(values).all():
                raise InvalidInput("the model cannot compute a prediction for these values", field=None)
            return np.asarray(values, dtype=float).tolist(), None
        classes = self.meta.classes or []
        if hasattr(self.model, "predict_proba"):
            # One call gives both answers; predict() would run predict_proba again.
            proba = self.predict_proba(X)
            if not np.isfinite(proba).all():
                raise InvalidInput("the model cannot compute probabilities for these values", field=None)
            return [classes[i] for i in proba.argmax(axis=1).tolist()], proba
        raw = self.model.predict(X)
        model_classes = list(getattr(self.model, "classes_", range(len(classes))))
        return [classes[model_classes.index(v)] for v in raw], None

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``model.predict_proba(X)`` for validated rows: the verified shortcut when there is one."""
        if self.fast_proba is not None:
            proba = self.fast_proba(X)
            if proba is not None:
                return proba
            # Declined (input beyond float32's range, or a non-finite result): scikit-learn
            # with all its checks, so the answer or the refusal is scikit-learn's own.
            return self.model.predict_proba(X)
        return checked_once(self.model.predict_proba, X)

    @cached_property
    def _class_names(self) -> list[str]:
        return [str(name) for name in self.meta.classes or []]
