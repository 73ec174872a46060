"""Shadow candidates: a stored version that answers a sampled share of the served rows off the
request's path, and the evidence that decides whether it replaces the served version.

``shadow.json`` (beside ``current.json``, written by the control worker: ``tpotserve_trainer.jobs``
``set_shadow`` / ``clear_shadow``) names the version in shadow::

    {"version": ..., "share": 0.05, "since": "2026-12-07T12:00:00Z", "reason": ..., "by": ...}

Each API worker's shadow runner (``tpotserve_api.shadow_runner``) answers the sampled rows with
that version after the served answer is computed and writes, per (model, served version,
shadow version) pair, what :func:`pair_figures` reads back (keys in ``tpotserve.live``):
rows compared, rows where both agree, the shadow's predict latency, and the shadow's answer
per prediction id. Feedback (``POST /models/<name>/feedback``) then scores both versions on
the same labelled rows.

:func:`evaluate` turns those paired counts into a decision, with a stated one-sided test:

- classification: the exact McNemar test. Of the labelled rows where exactly one of the two
  is right, ``b`` are the shadow's and ``c`` the served version's; under "neither is better"
  ``b ~ Binomial(b + c, 1/2)``. Promote when ``P(B >= b) < p_value`` (scipy's ``binomtest``,
  ``alternative="greater"``) AND shadow accuracy - served accuracy > ``margin``.
- regression: a one-sided paired t-test on ``d = served squared error - shadow squared error``
  per row (H1: mean d > 0), AND the relative drop in mean squared error,
  ``(mse_served - mse_shadow) / mse_served``, > ``margin``.

``wait`` while fewer than ``min_rows`` labelled rows; ``drop`` once the shadow is older than
``max_age_s`` without having been promoted.

Pure: no Flask, RQ or TPOT; Redis only through the client the caller passes.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from scipy import stats

from . import live
from .clock import utc_iso
from .contract import contract_of, diff
from .errors import Conflict, ContractConflict, InvalidInput
from .policy import Policy, Promotion, read_policy
from .settings import Settings
from .store import SHADOW_NAME, ModelStore

if TYPE_CHECKING:  # annotations only: the caller passes its client
    from redis import Redis

__all__ = [
    "DECISIONS", "LATENCY_BUCKETS_S", "check_candidate", "default_share", "document", "evaluate",
    "labelled_scores", "latency_quantile", "pair_figures", "policy_of", "read", "report", "reset_pair",
]

DECISIONS = ("promote", "wait", "drop")
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, math.inf)
"""Upper bounds of the shadow latency histogram (fields ``h0`` .. ``h13`` of the pair hash)."""
REGRESSION_TOLERANCE = 0.1
"""Two regression answers agree when they differ by at most this times the training target's
standard deviation (the served version's profile.json), or, without a profile, this times the
served answer's magnitude."""


# --- the document ----------------------------------------------------------------------
def check_candidate(store: ModelStore, version: str, model: str) -> dict[str, Any]:
    """The metadata of ``version`` once it may be put in shadow: it exists (NotFound), it is
    not the served version (Conflict), and it serves the served version's contract (features,
    target, task, classes: ContractConflict). The API checks before enqueueing; the control
    worker checks again when it writes."""
    meta = store.read_meta(version)
    pointer = store.read_pointer_quietly()
    if pointer is None:
        raise Conflict(f"model {model!r} serves no version yet: nothing to compare a shadow with", field="version")
    if pointer.version == version:
        raise Conflict(f"version {version!r} is the served version of {model!r}; a shadow is another stored "
                       "version", field="version")
    served = store.read_meta(pointer.version)
    old, new = contract_of(served), contract_of(meta)
    if old is not None and new is not None:
        change = diff(old, new)
        if change.breaking:  # added classes are the same contract (tpotserve.contract)
            raise ContractConflict(
                f"version {version!r} has another contract than the served {pointer.version!r} "
                f"({change.message()}): a shadow must answer the same rows with the same labels",
                field="version", contract_change=change.to_json(), current_version=pointer.version)
    return meta


def document(version: str, share: float, reason: str, by: str, now: float | None = None) -> dict[str, Any]:
    """shadow.json's content."""
    if not (isinstance(share, (int, float)) and not isinstance(share, bool) and 0 < share <= 1):
        raise InvalidInput(f"share must be a number in (0, 1], got {share!r}", field="share")
    return {"version": version, "share": float(share), "since": utc_iso(now), "reason": reason, "by": by}


def read(store: ModelStore) -> dict[str, Any] | None:
    """shadow.json, or None when no version is in shadow (or the file is not a shadow document)."""
    data = store.read_json(SHADOW_NAME)
    if not data or not isinstance(data.get("version"), str):
        return None
    return data


def policy_of(store: ModelStore) -> Policy | None:
    """The model's policy.json as a Policy; None without one (or with one that no longer validates)."""
    return read_policy(store)


def default_share(store: ModelStore, settings: Settings) -> float:
    """The policy's ``shadow.share`` when the model has a policy, else SHADOW_SHARE."""
    policy = policy_of(store)
    return policy.shadow.share if policy is not None else settings.shadow_share


def reset_pair(redis: Redis, model: str, served: str, shadow: str) -> None:
    """Forget the counts of a pair, so a shadow set again starts from nothing."""
    redis.delete(live.shadow_key(model, served, shadow), live.shadow_paired_key(model, served, shadow))


# --- the figures -----------------------------------------------------------------------
def pair_figures(redis: Redis, settings: Settings, model: str, served: str, shadow: str) -> dict[str, Any]:
    """What the API workers recorded for the pair: rows compared, agreement, the shadow's
    latency, and both versions' live scores on the labelled rows both answered."""
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(live.shadow_key(model, served, shadow))
    pipe.hgetall(live.shadow_paired_key(model, served, shadow))
    raw_pair, raw_paired = pipe.execute()
    pair = {k.decode(): float(v) for k, v in raw_pair.items()}
    paired = {k.decode(): float(v) for k, v in raw_paired.items()}
    rows = int(pair.get("rows", 0))
    calls = int(pair.get("lat_n", 0))
    counts = [int(pair.get(f"h{i}", 0)) for i in range(len(LATENCY_BUCKETS_S))]
    return {
        "model": model, "served_version": served, "shadow_version": shadow,
        "rows": rows,
        "agreeing_rows": int(pair.get("agree", 0)),
        "agreement": pair.get("agree", 0.0) / rows if rows else None,
        "latency": {
            "calls": calls,
            "mean_ms": 1000 * pair.get("lat_s", 0.0) / calls if calls else None,
            "p50_ms": _ms(latency_quantile(counts, 0.5)),
            "p95_ms": _ms(latency_quantile(counts, 0.95)),
            "of": "one shadow predict call (a sampled request's rows)",
        },
        "labelled": labelled_scores(paired),
    }


def labelled_scores(fields: dict[str, float]) -> dict[str, Any]:
    """Both versions' scores on the same labelled rows, and the paired counts behind them."""
    n = int(fields.get("n", 0))
    out: dict[str, Any] = {"rows": n}
    if not n:
        return {**out, "served": None, "shadow": None}
    if "sq_served" not in fields:  # classification
        served_ok, shadow_ok = fields.get("ok_served", 0.0), fields.get("ok_shadow", 0.0)
        return {**out, "served": {"accuracy": served_ok / n}, "shadow": {"accuracy": shadow_ok / n},
                "served_correct": int(served_ok), "shadow_correct": int(shadow_ok),
                "b": int(fields.get("b", 0)), "c": int(fields.get("c", 0))}
    y, y2 = fields.get("y", 0.0), fields.get("y2", 0.0)
    sst = y2 - y * y / n

    def score(sse: float) -> dict[str, Any]:
        return {"mse": sse / n, "rmse": math.sqrt(max(sse, 0.0) / n),
                "r2": (1 - sse / sst) if n >= 2 and sst > 1e-12 else None}

    return {**out, "served": score(fields["sq_served"]), "shadow": score(fields.get("sq_shadow", 0.0)),
            "d_sum": fields.get("d", 0.0), "d2_sum": fields.get("d2", 0.0)}


def latency_quantile(counts: list[int], q: float) -> float | None:
    """The q-quantile (seconds) of the histogram, interpolated linearly inside its bucket (as
    Prometheus' histogram_quantile); the last finite bound for the open-ended bucket."""
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    seen, lower = 0, 0.0
    for count, upper in zip(counts, LATENCY_BUCKETS_S):
        if count and seen + count >= rank:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
        lower = upper if not math.isinf(upper) else lower
    return lower


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


# --- the decision ----------------------------------------------------------------------
def evaluate(figures: dict[str, Any], task: str, promotion: Promotion, since_iso: str, now: float | None = None
             ) -> dict[str, Any]:
    """``promote`` when the shadow beats the served version on at least ``min_rows`` labelled
    rows by more than ``margin`` with the one-sided paired test at ``p_value`` (see the module
    docstring); else ``drop`` once the shadow is older than ``max_age_s``; else ``wait``."""
    now = time.time() if now is None else now
    labelled = figures.get("labelled") or {"rows": 0}
    n = int(labelled.get("rows", 0))
    age = max(0.0, now - epoch(since_iso))
    out: dict[str, Any] = {"rows": n, "min_rows": promotion.min_rows, "alpha": promotion.p_value,
                           "margin": promotion.margin, "age_s": round(age, 1), "max_age_s": promotion.max_age_s}
    if task == "classification":
        test = _mcnemar(labelled, n)
    else:
        test = _paired_t(labelled, n)
    out.update(test)
    significant = test["p_value"] is not None and test["p_value"] < promotion.p_value
    large = test["effect"] is not None and test["effect"] > promotion.margin
    if n >= promotion.min_rows and significant and large:
        decision = "promote"
        reason = (f"better on {n} labelled rows: {test['effect_name']} {test['effect']:+.4f} > margin "
                  f"{promotion.margin:g}, {test['test']} p={test['p_value']:.3g} < {promotion.p_value:g}")
    elif age > promotion.max_age_s:
        decision = "drop"
        reason = f"in shadow {age:.0f} s > max_age_s {promotion.max_age_s} without beating the served version"
    elif n < promotion.min_rows:
        decision = "wait"
        reason = f"{n} labelled rows both answered, {promotion.min_rows} needed"
    else:
        decision = "wait"
        why = []
        if not significant:
            why.append("p=" + ("n/a" if test["p_value"] is None else f"{test['p_value']:.3g}")
                       + f" not < {promotion.p_value:g}")
        if not large:
            why.append(f"{test['effect_name']} " + ("n/a" if test["effect"] is None else f"{test['effect']:+.4f}")
                       + f" not > margin {promotion.margin:g}")
        reason = "not better yet: " + "; ".join(why)
    return {"decision": decision, "reason": reason, **out}


def _mcnemar(labelled: dict[str, Any], n: int) -> dict[str, Any]:
    b, c = int(labelled.get("b", 0)), int(labelled.get("c", 0))
    p = float(stats.binomtest(b, b + c, 0.5, alternative="greater").pvalue) if b + c else None
    gain = (labelled["shadow"]["accuracy"] - labelled["served"]["accuracy"]) if n else None
    return {"test": "exact McNemar, one-sided (binomial test of b against b + c, p = 1/2)",
            "b": b, "c": c, "p_value": p, "effect_name": "accuracy gain", "effect": gain}


def _paired_t(labelled: dict[str, Any], n: int) -> dict[str, Any]:
    base = {"test": "paired t-test, one-sided, on d = served squared error - shadow squared error",
            "effect_name": "relative MSE drop"}
    if n < 2:
        return {**base, "n": n, "mean_d": None, "t": None, "p_value": None, "effect": None}
    d, d2 = float(labelled.get("d_sum", 0.0)), float(labelled.get("d2_sum", 0.0))
    mean = d / n
    var = max((d2 - d * d / n) / (n - 1), 0.0)
    served_mse = labelled["served"]["mse"]
    drop = (served_mse - labelled["shadow"]["mse"]) / served_mse if served_mse > 0 else None
    if var <= 0:
        t = math.inf if mean > 0 else (-math.inf if mean < 0 else 0.0)
        p = 0.0 if mean > 0 else 1.0
    else:
        t = mean / math.sqrt(var / n)
        p = float(stats.t.sf(t, n - 1))
    return {**base, "mean_d": mean, "t": t if math.isfinite(t) else None, "p_value": p, "effect": drop}


def epoch(iso: str) -> float:
    """An ISO 8601 time (UTC when it names no zone) as epoch seconds."""
    parsed = datetime.fromisoformat(str(iso).replace("Z", "+00:00"))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()


def report(store: ModelStore, redis: Redis, settings: Settings, model: str, now: float | None = None
           ) -> dict[str, Any]:
    """Everything ``GET /models/<name>/shadow`` answers: shadow.json, the pair's figures and the
    decision under the model's promotion settings (the defaults when it has none)."""
    doc = read(store)
    if doc is None:
        return {"model": model, "shadow": None}
    pointer = store.read_pointer_quietly()
    served = pointer.version if pointer else None
    policy = policy_of(store)
    promotion = policy.promote if policy is not None and policy.promote is not None else None
    body: dict[str, Any] = {
        "model": model, "served_version": served, "shadow": doc,
        "promotion": {"enabled": bool(policy is not None and policy.enabled and promotion is not None),
                      **(promotion or Promotion()).model_dump()},
    }
    if served is None:
        return {**body, "figures": None, "evaluation": None}
    task = str(store.read_meta(served).get("task"))
    figures = pair_figures(redis, settings, model, served, doc["version"])
    evaluation = evaluate(figures, task, promotion or Promotion(), doc["since"], now)
    return {**body, "task": task, "figures": figures, "evaluation": evaluation}
