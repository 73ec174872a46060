"""A version's compiled form: an ONNX graph beside the joblib artifact, and the check it must pass.

The trainer writes it (``tpotserve_trainer.compiler``), the API loads it with ONNX Runtime
and serves with it only after it reproduced the scikit-learn pipeline on the rows below
(``tpotserve_api.compiled``). Both sides use this module, so they agree on the file name,
the record in meta.json, the rows and the tolerance. No ONNX import here: the caller
passes the compiled form's answers in.

meta.json's ``compiled`` record (a version trained since compiled inference)::

    {"file": "model.onnx", "sha256": ..., "signature": ..., "precision": "mixed",
     "outputs": {"label": "label", "probabilities": "probabilities"}, "opset": {...},
     "library_versions": {...}, "reason": null}

or, when none could be made, ``{"file": null, "reason": "..."}``. ``model.onnx`` is also
listed in meta.json's ``files`` like every other document. A version published before
this gets the same record in a side file, ``compiled.json`` (``tpotserve compile``): its
meta.json, artifact and their hashes are never rewritten.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .model_meta import ModelMeta
from .store import SIDECAR_NAME

__all__ = [
    "COMPILED_NAME",
    "SIDECAR_NAME",
    "PROBA_ATOL",
    "VALUE_RTOL",
    "Verdict",
    "compare",
    "verification_rows",
]

COMPILED_NAME = "model.onnx"
PROBA_ATOL = 1e-4
"""Largest difference allowed between a compiled probability and scikit-learn's (absolute)."""
VALUE_RTOL = 1e-4
"""A regression value may differ from scikit-learn's by VALUE_RTOL x max(1, |value|)."""
RANDOM_ROWS = 64


@dataclass(frozen=True)
class Verdict:
    """Whether a compiled form reproduced the pipeline, and if not, why not."""

    ok: bool
    reason: str | None = None
    max_difference: float | None = None
    rows: int = 0


def verification_rows(meta: ModelMeta, model: Any = None, count: int = RANDOM_ROWS) -> np.ndarray:
    """Rows to compare a compiled form with the pipeline.

    The fast path's rows (the smoke row, each feature's bounds, seeded random rows over and a
    little beyond the training ranges) plus the rows the known wrong conversions fail on:
    the same rows negated (a row whose largest magnitude is negative: Normalizer(norm='max')),
    rows on the grid of the training values' decimals and their repeats (distance ties for
    nearest neighbours), zeros, and when ``model`` is given, the values its first steps
    compare the raw input with (KBinsDiscretizer edges, tree thresholds, one-hot categories),
    exactly, one float64 step and one float32 step either side.
    """
    low = np.array([f.min if f.min is not None else -1.0 for f in meta.features], dtype=float)
    high = np.array([f.max if f.max is not None else 1.0 for f in meta.features], dtype=float)
    span = np.where(high > low, high - low, 1.0)
    rng = np.random.default_rng(0)
    random = rng.uniform(low - 0.25 * span, high + 0.25 * span, size=(count, len(low)))
    middle = (low + high) / 2
    decimals = max(_decimals(v) for v in [*low, *high]) if len(low) else 0
    grid = np.round(rng.uniform(low, high, size=(count, len(low))), decimals)
    rows = [middle[None, :], low[None, :], high[None, :], random, -random, grid, grid[: count // 4],
            np.zeros((1, len(low)))]
    probes = _raw_input_probes(model, len(low)) if model is not None else {}
    for column, values in probes.items():
        values = np.unique(np.asarray(values, dtype=float))[:64]
        if not len(values):
            continue
        near = np.concatenate([values, np.nextafter(values, np.inf), np.nextafter(values, -np.inf),
                               np.nextafter(values.astype(np.float32), np.float32(np.inf)).astype(float),
                               np.nextafter(values.astype(np.float32), np.float32(-np.inf)).astype(float)])
        block = np.repeat(middle[None, :], len(near), axis=0)
        block[:, column] = near
        rows.append(block)
    return np.vstack(rows)


def check_outputs(meta: ModelMeta, model: Any, rows: np.ndarray, got: list[Any]) -> Verdict:
    """Whether a compiled form's outputs on ``rows`` (``[label] + [probabilities]`` for a
    classifier, ``[value]`` for a regressor) are the pipeline's own calls on them. The one
    check: the API makes it at load, the trainer before it stores a compiled form."""
    if meta.is_classifier:
        if hasattr(model, "predict_proba"):
            expected = model.predict_proba(rows)
            if len(got) < 2:
                return Verdict(False, "the compiled form has no probabilities")
            proba = np.asarray(got[1], dtype=float)
            return compare(meta, expected.argmax(axis=1), expected, proba.argmax(axis=1), proba)
        return compare(meta, model.predict(rows), None, np.asarray(got[0]).ravel(), None)
    return compare(meta, None, model.predict(rows), None, got[0])


def compare(meta: ModelMeta, expected_labels: Any, expected: np.ndarray | None, got_labels: Any,
            got: np.ndarray | None) -> Verdict:
    """Whether a compiled form's answers on the verification rows are the pipeline's.

    Classifiers: identical labels and, when the pipeline has ``predict_proba``, every
    probability within PROBA_ATOL. Regressors: every value within VALUE_RTOL x max(1, |value|).
    """
    rows = len(expected_labels) if expected_labels is not None else (0 if expected is None else len(expected))
    if meta.is_classifier:
        expected_labels = np.asarray(expected_labels)
        got_labels = np.asarray(got_labels)
        if got_labels.shape != expected_labels.shape:
            return Verdict(False, f"labels have shape {got_labels.shape}, expected {expected_labels.shape}", rows=rows)
        wrong = int((got_labels != expected_labels).sum())
        if expected is None:
            return Verdict(wrong == 0, None if wrong == 0 else f"{wrong} of {rows} labels differ", rows=rows)
        got = np.asarray(got, dtype=float)
        if got.shape != expected.shape:
            return Verdict(False, f"probabilities have shape {got.shape}, expected {expected.shape}", rows=rows)
        if not np.isfinite(got).all():
            return Verdict(False, "non-finite probabilities", rows=rows)
        worst = float(np.abs(got - expected).max()) if got.size else 0.0
        if wrong:
            return Verdict(False, f"{wrong} of {rows} labels differ (probabilities off by up to {worst:.3g})",
                           worst, rows)
        if worst > PROBA_ATOL:
            off = int((np.abs(got - expected) > PROBA_ATOL).any(axis=1).sum())
            return Verdict(False, f"probabilities of {off} of {rows} rows differ by up to {worst:.3g} "
                                  f"(tolerance {PROBA_ATOL:g})", worst, rows)
        return Verdict(True, None, worst, rows)
    expected = np.asarray(expected, dtype=float).ravel()
    got = np.asarray(got, dtype=float).ravel()
    rows = len(expected)
    if got.shape != expected.shape:
        return Verdict(False, f"values have shape {got.shape}, expected {expected.shape}", rows=rows)
    finite = np.isfinite(expected)
    if not np.isfinite(got[finite]).all():
        return Verdict(False, "non-finite values", rows=rows)
    error = np.abs(got[finite] - expected[finite]) / np.maximum(1.0, np.abs(expected[finite]))
    worst = float(error.max()) if error.size else 0.0
    if worst > VALUE_RTOL:
        off = int((error > VALUE_RTOL).sum())
        return Verdict(False, f"{off} of {rows} values differ by up to {worst:.3g} relative "
                              f"(tolerance {VALUE_RTOL:g})", worst, rows)
    return Verdict(True, None, worst, rows)


def _decimals(value: float, most: int = 6) -> int:
    for places in range(most + 1):
        if abs(round(value, places) - value) < 1e-9:
            return places
    return most


def _raw_input_probes(model: Any, n_features: int) -> dict[int, list[float]]:
    """Values the steps that read the raw input compare it with, per input column."""
    probes: dict[int, list[float]] = {}
    for step in _first_steps(model):
        edges = getattr(step, "bin_edges_", None)
        if edges is not None and len(edges) == n_features:
            for column, column_edges in enumerate(edges):
                probes.setdefault(column, []).extend(np.asarray(column_edges, dtype=float).tolist())
        for tree in _trees(step):
            for feature, threshold in zip(tree.feature, tree.threshold):
                if 0 <= feature < n_features:
                    probes.setdefault(int(feature), []).append(float(threshold))
        encoder = getattr(step, "enc", None)
        columns = getattr(step, "columns_", None)
        categories = getattr(encoder, "categories_", None)
        if categories is not None and columns is not None:
            for column, values in zip(columns, categories):
                if isinstance(column, (int, np.integer)) and 0 <= column < n_features:
                    probes.setdefault(int(column), []).extend(np.asarray(values, dtype=float).tolist())
    return probes


def _first_steps(model: Any) -> list[Any]:
    """The steps that see the raw input: a pipeline's first, a union's parts, recursively."""
    steps = getattr(model, "steps", None)
    if steps is not None:
        return _first_steps(steps[0][1]) if steps else []
    parts = getattr(model, "transformer_list", None)
    if parts is not None:
        return [leaf for _, part in parts for leaf in _first_steps(part)]
    inner = getattr(model, "estimator", None)
    return [model, *(_first_steps(inner) if inner is not None and hasattr(inner, "fit") else [])]


def _trees(step: Any) -> list[Any]:
    """The scikit-learn tree structures of a tree or an ensemble of them (first 50)."""
    if hasattr(step, "tree_"):
        return [step.tree_]
    estimators = getattr(step, "estimators_", None)
    if estimators is None:
        return []
    flat = np.asarray(estimators, dtype=object).ravel().tolist()
    return [tree.tree_ for tree in flat[:50] if hasattr(tree, "tree_")]
