"""The predict path's shortcut through scikit-learn, compiled and verified at load.

scikit-learn spends most of a one-row call around the computation, not in it. A
RandomForestClassifier's predict_proba validates its input, runs a joblib Parallel
over 100 delayed calls and, per tree, check_is_fitted and a feature-count check:
~4.5 ms around ~0.3 ms of tree walks. A FeatureUnion (TPOT puts them in most of its
pipelines) runs a joblib Parallel, warning filters and config copies per call: 3/4
of the trainer's iris pipeline's time. The shortcut does what scikit-learn does after
its checks, step by step -- a scaler's arithmetic, a selector's column mask, a
union's concatenation, each tree's tree_.predict summed in estimator order and
divided by the count -- and any other step by its own method. It is used only if it
gives bit-identical probabilities on verification rows, and only for input it can
vouch for: values within float32's range whose result is finite; anything else goes
to scikit-learn's own call, checks and all, so every refusal is scikit-learn's own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import sklearn
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.feature_selection import SelectorMixin
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.tree import DecisionTreeClassifier, ExtraTreeClassifier

from tpotserve.model_meta import ModelMeta

from .limits import MAX_MAGNITUDE

log = logging.getLogger(__name__)

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


def compile_fast_proba(model: Any, meta: ModelMeta) -> tuple[Callable | None, str]:
    """A verified shortcut for ``model.predict_proba`` and a description of what was chosen.

    The shortcut returns None for input it does not vouch for; the caller then uses
    ``model.predict_proba`` with all of scikit-learn's checks.
    """
    if not meta.is_classifier or not hasattr(model, "predict_proba"):
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
        if not _within_float32(X):
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
            return None  # scikit-learn's own call decides, and raises its own error
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


def verification_rows(meta: ModelMeta, count: int = VERIFY_ROWS) -> np.ndarray:
    """Rows to compare a shortcut with the real call: the smoke row, each feature's
    bounds, and seeded random rows over (and a little beyond) the training ranges."""
    low = np.array([f.min if f.min is not None else -1.0 for f in meta.features], dtype=float)
    high = np.array([f.max if f.max is not None else 1.0 for f in meta.features], dtype=float)
    span = np.where(high > low, high - low, 1.0)
    rng = np.random.default_rng(0)
    random = rng.uniform(low - 0.25 * span, high + 0.25 * span, size=(count, len(low)))
    return np.vstack([np.asarray([smoke_row(meta)], dtype=float), low, high, random])


def smoke_row(meta: ModelMeta) -> list[float]:
    """One plausible row: the midpoint of each feature's training range."""
    row = []
    for feature in meta.features:
        low, high = feature.min, feature.max
        row.append((low + high) / 2 if low is not None and high is not None else 0.0)
    return row


def checked_once(method: Callable[[np.ndarray], Any], X: np.ndarray) -> Any:
    """``method(X)`` without scikit-learn's per-step finiteness checks, where that is safe.

    parse_predict already refused NaN and infinity, so each step's check of its input
    only re-reads finite numbers. Two cases keep the checks, so that every answer (and
    every refusal) is the one scikit-learn gives with them: input beyond float32's range
    (tree models cast to float32 and refuse it), and a non-finite result (a step
    overflowed on the way): then ``method`` runs again with its checks.
    """
    if _within_float32(X):
        with sklearn.config_context(assume_finite=True):
            result = method(X)
        if np.isfinite(result).all():
            return result
    return method(X)


def _within_float32(X: np.ndarray) -> bool:
    """True for non-empty input whose every |value| is below float32's largest, the bound
    parse_predict enforces (equal to it still goes to scikit-learn's own checks)."""
    return bool(X.size) and float(np.abs(X).max()) < MAX_MAGNITUDE
