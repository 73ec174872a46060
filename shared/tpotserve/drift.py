"""Input drift: a version's reference profile, how live rows fall into its bins, and the
distance between the two.

The trainer writes the profile (``profile.json`` in the version, hashed in meta.json
like the card) from the training rows; the API counts the rows it serves into the same
bins (``tpotserve_api.monitoring``) and compares. Both sides use this module, so a bin
means the same thing on both.

Why not a monitoring framework: Evidently pulls ~79 packages into every API worker and
recomputes from raw rows; Alibi Detect is BSL-licensed and also wants raw rows; NannyML
is the same shape. The stack keeps counts, never raw rows, so the statistics are a few
lines of numpy over two histograms: the population stability index, and SciPy's
Jensen-Shannon distance.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import Any

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency

PROFILE_NAME = "profile.json"
BINS = 10
"""Quantile bins per numeric feature (fewer when the training values have fewer distinct quantiles)."""
MAX_CATEGORIES = 20
"""An integer-valued feature with at most this many distinct training values is counted per value."""
PSI_EPSILON = 1e-4
"""Share given to an empty bin in PSI, which is undefined for a zero share."""


# --- the reference, at training time ------------------------------------------------
def reference_profile(X: Any, y: Any, task: str) -> dict[str, Any]:
    """The profile of the training rows ``X`` (a DataFrame, the model's feature order) and
    the target ``y``: per feature its bins and the share of training rows in each."""
    features = [_feature_profile(str(name), np.asarray(X[name], dtype=float)) for name in X.columns]
    return {"rows": int(len(X)), "bins": BINS, "features": features, "target": _target_profile(y, task)}


def _feature_profile(name: str, values: np.ndarray) -> dict[str, Any]:
    values = values[np.isfinite(values)]
    distinct = np.unique(values)
    base = {"name": name, "min": float(values.min()), "max": float(values.max()),
            "missing_share": 0.0, "out_of_range_share": 0.0}
    if len(distinct) <= MAX_CATEGORIES and np.all(distinct == np.round(distinct)):
        counts = np.array([(values == v).sum() for v in distinct], dtype=float)
        # The last bin is "another value": live values the training rows never had.
        shares = np.append(counts / counts.sum(), 0.0)
        return {**base, "kind": "category", "values": distinct.tolist(), "shares": shares.tolist()}
    # Interior edges at the training quantiles; the outer bins are open-ended, so a live
    # value beyond the training range still lands in a bin (and is counted out of range).
    edges = np.unique(np.quantile(values, np.linspace(0, 1, BINS + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    return {**base, "kind": "number", "edges": edges.tolist(), "shares": (counts / counts.sum()).tolist()}


def _target_profile(y: Any, task: str) -> dict[str, Any]:
    values = np.asarray(y)
    if task == "classification":
        labels, counts = np.unique(values.astype(str), return_counts=True)
        return {"kind": "classes", "shares": {str(k): float(c / counts.sum()) for k, c in zip(labels, counts)}}
    floats = values.astype(float)
    points = [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0]
    return {"kind": "quantiles", "mean": float(floats.mean()), "std": float(floats.std()),
            "quantiles": {str(p): float(q) for p, q in zip(points, np.quantile(floats, points))}}


# --- live rows into the reference's bins ------------------------------------------
class Binner:
    """Counts the rows of a validated float matrix into a profile's bins, fast enough for every
    request: one ``searchsorted`` per feature and one ``bincount`` for all of them.

    ``count(X)`` answers one flat vector: each feature's bins in turn (``offsets``), then per
    feature the rows outside its training range."""

    def __init__(self, profile: dict[str, Any]) -> None:
        self.features = profile["features"]
        self.sizes = [len(f["shares"]) for f in self.features]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.total_bins = int(sum(self.sizes))
        self.length = self.total_bins + len(self.sizes)
        self._lookups = [np.asarray(f["edges"] if f["kind"] == "number" else f["values"], dtype=float)
                         for f in self.features]
        self._categorical = [f["kind"] == "category" for f in self.features]
        self._low = np.array([f["min"] for f in self.features], dtype=float)
        self._high = np.array([f["max"] for f in self.features], dtype=float)
        self._outside_slots = np.arange(self.total_bins, self.length)
        self._lists = [lookup.tolist() for lookup in self._lookups]
        self._offsets_list = self.offsets.tolist()
        self._low_list, self._high_list = self._low.tolist(), self._high.tolist()

    def count(self, X: np.ndarray) -> np.ndarray:
        columns = []
        for j, lookup in enumerate(self._lookups):
            column = X[:, j]
            index = np.searchsorted(lookup, column, side="left")
            if self._categorical[j]:
                clipped = np.minimum(index, len(lookup) - 1)
                index = np.where(lookup[clipped] == column, clipped, len(lookup))  # another value
            columns.append(index + self.offsets[j])
        outside = (X < self._low) | (X > self._high)
        slots = np.concatenate([*columns, np.broadcast_to(self._outside_slots, X.shape)[outside]])
        return np.bincount(slots, minlength=self.length)

    def slots(self, row: list[float]) -> list[int]:
        """``count`` for one row, as the slots to add one to: plain Python, ~4x faster than
        numpy's per-call overhead for the one-row requests most traffic is."""
        out = []
        for j, lookup in enumerate(self._lists):
            value = row[j]
            index = bisect_left(lookup, value)
            if self._categorical[j] and (index == len(lookup) or lookup[index] != value):
                index = len(lookup)
            out.append(self._offsets_list[j] + index)
            if value < self._low_list[j] or value > self._high_list[j]:
                out.append(self.total_bins + j)
        return out

    def split(self, counts: np.ndarray) -> tuple[list[list[int]], list[int]]:
        """A flat vector of ``count`` as (per-feature bin counts, per-feature out-of-range counts)."""
        bins = [counts[o:o + n].tolist() for o, n in zip(self.offsets, self.sizes)]
        return bins, counts[self.total_bins:].tolist()


# --- the comparison ------------------------------------------------------------------
def psi(reference: np.ndarray, live: np.ndarray) -> float:
    """Population stability index of two share vectors (empty bins get ``PSI_EPSILON``)."""
    p = np.maximum(np.asarray(reference, dtype=float), PSI_EPSILON)
    q = np.maximum(np.asarray(live, dtype=float), PSI_EPSILON)
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(reference: np.ndarray, live: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2: 0 the same, 1 disjoint) of two histograms."""
    value = float(jensenshannon(np.asarray(reference, dtype=float), np.asarray(live, dtype=float), base=2))
    return 0.0 if math.isnan(value) else value


def homogeneity_p(reference_counts: np.ndarray, live_counts: np.ndarray) -> float:
    """p-value of a chi-square test that both samples come from one distribution over the bins."""
    table = np.vstack([reference_counts, live_counts]).astype(float)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 1.0
    return float(chi2_contingency(table, correction=False)[1])


def compare(profile: dict[str, Any], counts: list[list[int]], out_of_range: list[int], rows: int, *,
            js_threshold: float, psi_threshold: float, min_rows: int, p_value: float) -> dict[str, Any]:
    """Per feature, live vs reference: PSI, JS distance, live shares and a verdict; and the
    share of drifted features. ``counts``: per feature, live rows per bin.

    A feature has drifted when the distance is large (JS or PSI over its threshold) *and*
    more than sampling could make it: two samples of a few hundred rows over ten bins differ
    by a JS distance of about 0.1 by chance alone (the expected divergence grows with
    bins / rows), so the verdict also needs a chi-square test of the two histograms to reject
    "one distribution" at ``p_value``."""
    enough = rows >= min_rows
    features = []
    for feature, live, outside in zip(profile["features"], counts, out_of_range):
        live = np.asarray(live, dtype=float)
        reference = np.asarray(feature["shares"], dtype=float)
        total = live.sum()
        entry: dict[str, Any] = {
            "feature": feature["name"], "kind": feature["kind"], "rows": int(total),
            "reference_shares": reference.tolist(),
            "live_shares": (live / total).tolist() if total else None,
            "out_of_range_share": float(outside / total) if total else None,
            "bins": _bin_labels(feature),
        }
        if total:
            entry["psi"] = round(psi(reference, live / total), 6)
            entry["js_distance"] = round(js_distance(reference, live / total), 6)
            entry["p_value"] = homogeneity_p(np.rint(reference * profile["rows"]), live)
            drifted = (entry["psi"] > psi_threshold or entry["js_distance"] > js_threshold) and (
                entry["p_value"] < p_value)
            entry["verdict"] = ("drift" if drifted else "ok") if enough else "not_enough_rows"
        else:
            entry.update(psi=None, js_distance=None, p_value=None, verdict="not_enough_rows")
        features.append(entry)
    judged = [f for f in features if f["verdict"] != "not_enough_rows"]
    drifted = [f["feature"] for f in judged if f["verdict"] == "drift"]
    return {
        "rows": int(rows),
        "enough_rows": enough,
        "min_rows": min_rows,
        "thresholds": {"js_distance": js_threshold, "psi": psi_threshold, "p_value": p_value},
        "drifted_features": drifted,
        "drifted_share": (len(drifted) / len(features)) if judged and features else None,
        "verdict": ("drift" if drifted else "ok") if enough else "not_enough_rows",
        "features": features,
    }


def _bin_labels(feature: dict[str, Any]) -> list[str]:
    if feature["kind"] == "category":
        return [_num(v) for v in feature["values"]] + ["other"]
    edges = feature["edges"]
    if not edges:
        return ["all"]
    inner = ["(" + _num(low) + ", " + _num(high) + "]" for low, high in zip(edges, edges[1:])]
    return ["≤" + _num(edges[0]), *inner, ">" + _num(edges[-1])]


def _num(value: float) -> str:
    return f"{value:.4g}"
