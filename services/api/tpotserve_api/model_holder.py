"""Each Gunicorn worker's model holder: load beside, verify, then swap.

A daemon thread polls the store's pointer every ``poll_interval`` seconds (a
read of one small file). When the pointer names a new version, the holder
loads it beside the one it serves, checks its sha256 and a smoke prediction,
and only then swaps one reference. A failed load keeps the old model and is
recorded for /readyz. Requests never block on loading: they read whichever
model is current at the moment they start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import joblib
import numpy as np
import sklearn
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.feature_selection import SelectorMixin
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.tree import DecisionTreeClassifier, ExtraTreeClassifier

from tpotserve.errors import InvalidInput, ArtifactRejected, ModelNotReady, NotFound
from tpotserve.store import ModelStore, Pointer

from . import metrics

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A verified model and what the API needs to answer with it."""

    pointer: Pointer
    meta: dict[str, Any]
    model: Any
    loaded_at: float = field(default_factory=time.time)
    fast_proba: Callable[[np.ndarray], np.ndarray | None] | None = field(default=None, repr=False)
    """A shortcut for ``model.predict_proba``, checked at load to give identical answers
    (:func:`compile_fast_proba`); None: scikit-learn's own call."""

    @property
    def version(self) -> str:
        return self.pointer.version

    @cached_property
    def feature_names(self) -> list[str]:
        return [f["name"] for f in self.meta["features"]]

    @property
    def is_classifier(self) -> bool:
        return self.meta["task"] == "classification"

    def predict(self, rows: list[list[float]]) -> tuple[list[Any], list[dict[str, float]] | None]:
        """Predictions (class names or numbers) and, for classifiers, class probabilities.

        ``rows`` were validated by tpotserve.schema.parse_predict (finite numbers, the
        model's feature order), so scikit-learn's own per-call finiteness checks are skipped.
        """
        X = np.asarray(rows, dtype=float)
        if not self.is_classifier:
            values = _checked_once(self.model.predict, X)
            if not np.isfinite(values).all():
                raise InvalidInput("the model cannot compute a prediction for these values", field=None)
            return [float(v) for v in values], None
        classes = self.meta["classes"]
        if hasattr(self.model, "predict_proba"):
            # One call gives both answers; predict() would run predict_proba again.
            proba = self.predict_proba(X)
            if not np.isfinite(proba).all():
                raise InvalidInput("the model cannot compute probabilities for these values", field=None)
            predictions = [classes[i] for i in proba.argmax(axis=1).tolist()]
            names = self._class_names
            # tolist(): plain floats in one C loop, not one numpy scalar per value.
            probabilities = [dict(zip(names, row)) for row in proba.tolist()]
            return predictions, probabilities
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
            # with all its checks, which answers or refuses exactly as it always did.
            return self.model.predict_proba(X)
        return _checked_once(self.model.predict_proba, X)

    @cached_property
    def _class_names(self) -> list[str]:
        return [str(name) for name in self.meta["classes"]]


# --- the predict path's shortcut -------------------------------------------------------
# scikit-learn spends most of a one-row call around the computation, not in it. A
# RandomForestClassifier's predict_proba validates its input, runs a joblib Parallel
# over 100 delayed calls and, per tree, check_is_fitted and a feature-count check:
# ~4.5 ms around ~0.3 ms of tree walks. A FeatureUnion (TPOT puts them in most of its
# pipelines) runs a joblib Parallel, warning filters and config copies per call: 3/4
# of the trainer's iris pipeline's time. The shortcut does what scikit-learn does after
# its checks, step by step -- a scaler's arithmetic, a selector's column mask, a
# union's concatenation, each tree's tree_.predict summed in estimator order and
# divided by the count -- and any other step by its own method. It is used only if it
# gives bit-identical probabilities on verification rows, and only for input it can
# vouch for: values within float32's range whose result is finite; anything else goes
# to scikit-learn's own call, checks and all, so every refusal stays the same.

FOREST_CLASSES = (RandomForestClassifier, ExtraTreesClassifier)
TREE_CLASSES = (DecisionTreeClassifier, ExtraTreeClassifier)
VERIFY_ROWS = 64
Transform = Callable[[np.ndarray], np.ndarray]


def pin_single_thread(model: Any) -> list[str]:
    """Set every ``n_jobs`` inside ``model`` to 1; returns the parameters changed.

    Each Gunicorn worker owns one core's worth of work: a forest with n_jobs=-1 would
    start a joblib thread pool on every call and the workers would fight over the cores.
    n_jobs changes how a prediction is computed, never its result (a forest with threads
    even sums its trees in a nondeterministic order; with one it is always the same).
    """
    changed = []
    try:
        params = model.get_params(deep=True)
    except Exception:  # noqa: BLE001 - not a scikit-learn estimator: nothing to pin
        return changed
    for name, value in params.items():
        if (name == "n_jobs" or name.endswith("__n_jobs")) and value not in (None, 1):
            try:
                model.set_params(**{name: 1})
                changed.append(name)
            except Exception:  # noqa: BLE001 - a parameter it will not take: leave it
                log.info("could not set %s=1 on the model", name)
    return changed


def compile_fast_proba(model: Any, meta: dict[str, Any]) -> tuple[Callable | None, str]:
    """A verified shortcut for ``model.predict_proba`` and a description of what was chosen.

    The shortcut returns None for input it does not vouch for; the caller then uses
    ``model.predict_proba`` with all of scikit-learn's checks.
    """
    if meta.get("task") != "classification" or not hasattr(model, "predict_proba"):
        return None, "predict_proba"
    steps = list(model.steps) if isinstance(model, Pipeline) else [("model", model)]
    steps = [step for _, step in steps if step is not None and step != "passthrough"]
    if not steps:
        return None, "predict_proba"
    *transform_steps, final = steps
    transforms = [compile_transform(step) for step in transform_steps]
    if any(t is None for t in transforms):
        return None, "predict_proba"
    head = forest_sum(final)
    how = "direct tree sum"
    if head is None:
        if not hasattr(final, "predict_proba"):
            return None, "predict_proba"
        head, how = final.predict_proba, "steps without per-call checks"

    def fast_proba(X: np.ndarray) -> np.ndarray | None:
        if not X.size or not float(np.abs(X).max()) < FLOAT32_MAX:
            return None
        with sklearn.config_context(assume_finite=True):  # our input is validated: finite
            for transform in transforms:
                X = transform(X)
            proba = head(X)
        if proba is None or not np.isfinite(proba).all():
            return None
        return proba

    try:
        rows = verification_rows(meta)
        expected = model.predict_proba(rows)
        got = fast_proba(rows)
    except Exception as exc:  # noqa: BLE001 - no shortcut is better than a wrong one
        log.warning("no fast predict path: %s: %s", type(exc).__name__, exc)
        return None, "predict_proba"
    if got is None or got.shape != expected.shape or not np.array_equal(got, expected):
        log.warning("no fast predict path: it differs from predict_proba on the verification rows")
        return None, "predict_proba"
    names = " -> ".join(type(step).__name__ for step in steps)
    return fast_proba, f"{how} ({names})"


def forest_sum(final: Any) -> Callable[[np.ndarray], np.ndarray | None] | None:
    """A random forest's or extra-trees' predict_proba as the sum of its trees' own
    tree_.predict, in estimator order, divided by the count; None for other models."""
    if type(final) not in FOREST_CLASSES or getattr(final, "n_outputs_", None) != 1:
        return None
    if not all(type(tree) in TREE_CLASSES for tree in final.estimators_):
        return None
    trees = [tree.tree_ for tree in final.estimators_]
    n_classes = int(final.n_classes_)
    n_features = int(final.n_features_in_)
    count = len(trees)

    def trees_proba(X: np.ndarray) -> np.ndarray | None:
        with np.errstate(over="ignore"):  # beyond float32: declined just below
            X32 = np.asarray(X, dtype=np.float32, order="C")
        if X32.ndim != 2 or X32.shape[1] != n_features or not np.isfinite(X32).all():
            return None  # scikit-learn's own call decides (and raises as it always did)
        out = np.zeros((X32.shape[0], n_classes), dtype=np.float64)
        for tree in trees:
            out += tree.predict(X32)[:, :n_classes]
        out /= count
        return out

    return trees_proba


def compile_transform(step: Any) -> Transform | None:
    """One pipeline step's transform: its arithmetic where it is simple and known,
    else the step's own ``transform``; None when it has none."""
    if type(step) is StandardScaler:
        mean = np.asarray(step.mean_, dtype=np.float64) if step.with_mean else None
        with_std = step.with_std and step.scale_ is not None
        scale = np.asarray(step.scale_, dtype=np.float64) if with_std else None

        def standard(X: np.ndarray) -> np.ndarray:
            X = np.array(X, dtype=np.float64)  # transform(copy=True) works on a copy too
            if mean is not None:
                X -= mean
            if scale is not None:
                X /= scale
            return X

        return standard
    if type(step) is MinMaxScaler and not step.clip:
        factor, offset = np.asarray(step.scale_, dtype=np.float64), np.asarray(step.min_, dtype=np.float64)

        def min_max(X: np.ndarray) -> np.ndarray:
            X = np.array(X, dtype=np.float64)
            X *= factor
            X += offset
            return X

        return min_max
    if isinstance(step, SelectorMixin) and type(step).transform is SelectorMixin.transform:
        mask = np.asarray(step.get_support(), dtype=bool)
        if mask.all():
            return lambda X: X
        return lambda X: X[:, mask] if mask.any() else np.empty((X.shape[0], 0), dtype=X.dtype)
    if type(step) is FeatureUnion:
        return compile_union(step)
    # TPOT's own no-op steps, inside most of its pipelines' FeatureUnions (matched by
    # name: importing tpot here would run before its update check is switched off).
    kind = (type(step).__module__, type(step).__qualname__)
    if kind == ("tpot.builtin_modules.passthrough", "Passthrough"):
        return lambda X: X
    if kind == ("tpot.builtin_modules.passthrough", "SkipTransformer"):
        return lambda X: np.array([]).reshape(X.shape[0], 0)
    return step.transform if hasattr(step, "transform") else None


def compile_union(union: FeatureUnion) -> Transform | None:
    """FeatureUnion.transform without its joblib Parallel: each part, weighted, concatenated."""
    weights = union.transformer_weights or {}
    parts: list[tuple[Transform, Any]] = []
    for name, part in union.transformer_list:
        if part == "drop" or part is None:
            continue
        compiled = (lambda X: X) if part == "passthrough" else compile_transform(part)
        if compiled is None:
            return None
        parts.append((compiled, weights.get(name)))

    def union_transform(X: np.ndarray) -> np.ndarray:
        outputs = []
        for compiled, weight in parts:
            out = compiled(X)
            if not isinstance(out, np.ndarray) or out.ndim != 2:
                return union.transform(X)  # sparse or a DataFrame: the union's own code
            outputs.append(out if weight is None else out * weight)
        if not outputs:
            return np.zeros((X.shape[0], 0))
        return np.concatenate(outputs, axis=1)

    return union_transform


def verification_rows(meta: dict[str, Any], count: int = VERIFY_ROWS) -> np.ndarray:
    """Rows to compare a shortcut with the real call: the smoke row, each feature's
    bounds, and seeded random rows over (and a little beyond) the training ranges."""
    low = np.array([f["min"] if f.get("min") is not None else -1.0 for f in meta["features"]], dtype=float)
    high = np.array([f["max"] if f.get("max") is not None else 1.0 for f in meta["features"]], dtype=float)
    span = np.where(high > low, high - low, 1.0)
    rng = np.random.default_rng(0)
    random = rng.uniform(low - 0.25 * span, high + 0.25 * span, size=(count, len(low)))
    return np.vstack([np.asarray([smoke_row(meta)], dtype=float), low, high, random])


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _checked_once(method: Callable[[np.ndarray], Any], X: np.ndarray) -> Any:
    """``method(X)`` without scikit-learn's per-step finiteness checks, where that is safe.

    parse_predict already refused NaN and infinity, so each step's check of its input
    only re-reads finite numbers. Two cases keep the checks, so that every answer (and
    every refusal) is the one scikit-learn gives with them: input beyond float32's range
    (tree models cast to float32 and refuse it), and a non-finite result (a step
    overflowed on the way): then ``method`` runs again with its checks.
    """
    if X.size and float(np.abs(X).max()) < FLOAT32_MAX:
        with sklearn.config_context(assume_finite=True):
            result = method(X)
        if np.isfinite(result).all():
            return result
    return method(X)


def smoke_row(meta: dict[str, Any]) -> list[float]:
    """One plausible row: the midpoint of each feature's training range."""
    row = []
    for feature in meta["features"]:
        low, high = feature.get("min"), feature.get("max")
        row.append((low + high) / 2 if low is not None and high is not None else 0.0)
    return row


class ModelHolder:
    """Holds the model one worker serves and follows the store's pointer."""

    def __init__(self, store: ModelStore, poll_interval_s: float) -> None:
        self.store = store
        self.poll_interval_s = poll_interval_s
        self._current: LoadedModel | None = None
        self._last_error: dict[str, Any] | None = None
        self._failed_pointer: Pointer | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # --- serving -----------------------------------------------------------
    def current(self) -> LoadedModel:
        model = self._current
        if model is None:
            raise ModelNotReady("no model is loaded yet; the first training may still be running")
        return model

    def status(self) -> dict[str, Any]:
        model = self._current
        return {
            "model_loaded": model is not None,
            "model_version": model.version if model else None,
            "loaded_at": _iso(model.loaded_at) if model else None,
            "last_load_error": self._last_error,
        }

    # --- following the pointer ---------------------------------------------
    def refresh(self) -> bool:
        """Load the pointer's version if it changed; True when a new model was swapped in."""
        with self._lock:  # the poll thread and a start-up call must not load twice
            try:
                pointer = self.store.read_pointer()
            except ArtifactRejected as exc:
                self._record_failure(None, str(exc))
                return False
            if pointer is None:
                return False
            current = self._current
            if current is not None and pointer.same_model(current.pointer):
                # The pointer is back on what we serve (e.g. a bad activate was undone).
                self._failed_pointer = None
                self._last_error = None
                return False
            if pointer.same_model(self._failed_pointer):
                return False  # versions are immutable: the same pointer fails the same way
            started = time.perf_counter()
            try:
                loaded = self._load(pointer)
            except Exception as exc:  # noqa: BLE001 - any failure must leave the old model serving
                self._record_failure(pointer, f"{type(exc).__name__}: {exc}")
                metrics.record_model_load_failed()
                return False
            self._current = loaded
            metrics.record_model_loaded(
                current.version if current else None, pointer.version, time.perf_counter() - started
            )
            self._failed_pointer = None
            self._last_error = None
            log.info(
                "serving model %s (loaded in %.0f ms)",
                pointer.version,
                (time.perf_counter() - started) * 1000,
            )
            return True

    def start_polling(self) -> None:
        """Start the daemon thread that follows the pointer (once per process)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._poll_forever, name="model-poll", daemon=True)
        self._thread.start()

    def _poll_forever(self) -> None:
        while True:
            time.sleep(self.poll_interval_s)
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - the poller must never die
                log.exception("model poll failed")

    def _load(self, pointer: Pointer) -> LoadedModel:
        try:
            meta = self.store.read_meta(pointer.version)
        except NotFound as exc:
            raise ArtifactRejected(str(exc)) from exc
        if meta.get("sha256") != pointer.sha256:
            raise ArtifactRejected(f"{pointer.version}: pointer and metadata disagree on sha256")
        # Hash first: joblib.load runs pickle, which must only ever see verified bytes.
        path = self.store.verified_artifact(pointer.version, pointer.sha256)
        model = joblib.load(path)
        pinned = pin_single_thread(model)
        fast_proba, how = compile_fast_proba(model, meta)
        loaded = LoadedModel(pointer=pointer, meta=meta, model=model, fast_proba=fast_proba)
        pins = f" ({', '.join(pinned)}=1)" if pinned else ""
        log.info("model %s predicts with %s%s", pointer.version, how, pins)
        predictions, _ = loaded.predict([smoke_row(meta)])
        if len(predictions) != 1:
            raise ArtifactRejected(f"{pointer.version}: smoke prediction returned {predictions!r}")
        return loaded

    def _record_failure(self, pointer: Pointer | None, message: str) -> None:
        self._failed_pointer = pointer
        self._last_error = {
            "version": pointer.version if pointer else None,
            "message": message,
            "at": _iso(time.time()),
        }
        log.error("refused model %s: %s", pointer.version if pointer else "?", message)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
