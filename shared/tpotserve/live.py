"""What the API workers recorded in Redis about the models they serve, read back: the live
bin counts against a version's training profile (drift), and the feedback joined to its
answers (live quality).

The API writes these keys (``tpotserve_api.monitoring`` on the serving path, its feedback
endpoint); the API's watch endpoints and gauges and the scheduler's triggers read them
here, so both judge a model by the same figures.

Redis keys (``tpotserve:mon:`` prefix), each with a TTL:

    counts:<model>:<version>:<bucket>    hash: rows, f<j>:<bin>, o<j> (out of the training range)
    answers:<model>:<hour>               hash: prediction id -> JSON: version, predictions (and rows,
                                         when kept), time; at most FEEDBACK_MAX_ANSWERS fields
    quality:<model>:<version>:<bucket>   hash: n, correct | abs, sq, y, y2
    skips:<model>                        hash: feedback skipped, by reason
    labelled:<model>                     list: labelled live rows (FEEDBACK_KEEP_ROWS only)
    feedback-total:<model>               counter: feedback rows ever counted (the feedback trigger's clock)
    shadow:<model>:<served>:<shadow>     hash: rows (compared), agree, lat_s, lat_n (the shadow's predict
                                         seconds, calls), h<i> (calls per tpotserve.shadow.LATENCY_BUCKETS_S)
    shadow_paired:<model>:<served>:<shadow>  hash, from feedback on rows both answered: n, and
                                         ok_served, ok_shadow, b (only the shadow right), c (only the
                                         served right) | sq_served, sq_shadow, d, d2 (d = served sq.
                                         error - shadow sq. error), y, y2
    shadow_answers:<model>:<hour>        hash: prediction id -> JSON: s (served version), v (shadow
                                         version), r (rows of the answer), p (the shadow's predictions), t;
                                         at most FEEDBACK_MAX_ANSWERS fields

The pair hashes live MONITORING_RETENTION_S after their last write (a shadow set again starts
them from nothing: ``tpotserve.shadow.reset_pair``); shadow answers as long as answers.
"""

from __future__ import annotations

import json
import math
import time
from typing import TYPE_CHECKING, Any


from .clock import utc_iso
from .drift import PROFILE_NAME, compare
from .errors import NoReference
from .settings import Settings

if TYPE_CHECKING:  # annotations only: the caller passes its client
    from redis import Redis

PREFIX = "tpotserve:mon:"


def counts_key(model: str, version: str, bucket: int) -> str:
    return f"{PREFIX}counts:{model}:{version}:{bucket}"


def answers_key(model: str, hour: int) -> str:
    return f"{PREFIX}answers:{model}:{hour}"


def fed_key(model: str, prediction_id: str, row: int) -> str:
    """Set once feedback for that row was counted: each row counts once."""
    return f"{PREFIX}fed:{model}:{prediction_id}:{row}"


def quality_key(model: str, version: str, bucket: int) -> str:
    return f"{PREFIX}quality:{model}:{version}:{bucket}"


def skips_key(model: str) -> str:
    return f"{PREFIX}skips:{model}"


def feedback_total_key(model: str) -> str:
    return f"{PREFIX}feedback-total:{model}"


def labelled_key(model: str) -> str:
    return f"{PREFIX}labelled:{model}"


def shadow_key(model: str, served: str, shadow: str) -> str:
    return f"{PREFIX}shadow:{model}:{served}:{shadow}"


def shadow_paired_key(model: str, served: str, shadow: str) -> str:
    return f"{PREFIX}shadow_paired:{model}:{served}:{shadow}"


def shadow_answers_key(model: str, hour: int) -> str:
    return f"{PREFIX}shadow_answers:{model}:{hour}"


def buckets(settings: Settings, since: float, until: float) -> list[int]:
    """The time buckets that overlap [since, until]."""
    size = settings.monitoring_bucket_s
    return list(range(int(since // size), int(until // size) + 1))


def find_answers(redis: Redis, settings: Settings, model: str, prediction_ids: list[str],
                 key: Any = answers_key) -> list[bytes | None]:
    """What the stack answered under each prediction id (None: unknown or expired), newest hour
    first. ``key``: :func:`shadow_answers_key` for what the shadow answered."""
    if not prediction_ids:
        return []
    now_hour = int(time.time() // 3600)
    hours = range(now_hour, now_hour - settings.feedback_ttl_s // 3600 - 2, -1)
    pipe = redis.pipeline(transaction=False)
    for hour in hours:
        pipe.hmget(key(model, hour), prediction_ids)
    found: list[bytes | None] = [None] * len(prediction_ids)
    for values in pipe.execute():
        for i, value in enumerate(values):
            if found[i] is None and value is not None:
                found[i] = value
    cutoff = time.time() - settings.feedback_ttl_s
    return [raw if raw is not None and json.loads(raw)["t"] >= cutoff else None for raw in found]


def live_counts(redis: Redis, model: str, version: str, sizes: list[int], bucket_ids: list[int]
                ) -> tuple[int, list[list[int]], list[int]]:
    """Rows, per-feature bin counts and out-of-range counts of ``version`` over ``bucket_ids``."""
    pipe = redis.pipeline(transaction=False)
    for bucket in bucket_ids:
        pipe.hgetall(counts_key(model, version, bucket))
    rows = 0
    bins = [[0] * size for size in sizes]
    outside = [0] * len(sizes)
    for found in pipe.execute():
        for raw_name, raw_value in found.items():
            name, value = raw_name.decode(), int(raw_value)
            if name == "rows":
                rows += value
            elif name.startswith("f"):
                j, _, i = name[1:].partition(":")
                if int(j) < len(sizes) and int(i) < sizes[int(j)]:
                    bins[int(j)][int(i)] += value
            elif name.startswith("o") and int(name[1:]) < len(sizes):
                outside[int(name[1:])] += value
    return rows, bins, outside


# --- the figures ---------------------------------------------------------------------
def drift_figures(store: Any, redis: Redis, settings: Settings, name: str, version: str, since: float,
                  until: float) -> dict[str, Any]:
    """Live rows of ``version`` in [since, until] against its training profile (NoReference without one)."""
    meta = store.read_meta(version)
    if PROFILE_NAME not in (meta.get("files") or {}):
        raise NoReference(f"version {version!r} of {name!r} has no reference profile: it was trained before "
                          "drift monitoring; retrain to get one", field="version")
    profile = json.loads(store.read_document(version, PROFILE_NAME))
    sizes = [len(f["shares"]) for f in profile["features"]]
    rows, bins, outside = live_counts(redis, name, version, sizes, buckets(settings, since, until))
    report = compare(profile, bins, outside, rows, js_threshold=settings.drift_js_threshold,
                     psi_threshold=settings.drift_psi_threshold, min_rows=settings.drift_min_rows,
                     p_value=settings.drift_p_value)
    return {
        "version": version, "since": utc_iso(since), "until": utc_iso(until),
        "bucket_s": settings.monitoring_bucket_s, "monitoring": settings.monitoring,
        "reference": {"rows": profile["rows"], "of": "the version's training rows (the search rows)"},
        **report,
    }


def quality_figures(store: Any, redis: Redis, settings: Settings, name: str, served: str, task: str,
                    since: float, until: float) -> dict[str, Any]:
    """Live quality per version from the feedback on answers given in [since, until]."""
    bucket_ids = buckets(settings, since, until)
    metas = {meta["version"]: meta for meta in store.list_versions()}
    pipe = redis.pipeline(transaction=False)
    for version in metas:
        for bucket in bucket_ids:
            pipe.hgetall(quality_key(name, version, bucket))
    found = pipe.execute()
    skips = {k.decode(): int(v) for k, v in redis.hgetall(skips_key(name)).items()}
    versions, series = [], []
    for v_index, (version, meta) in enumerate(metas.items()):
        total: dict[str, float] = {}
        for b_index, bucket in enumerate(bucket_ids):
            fields = {k.decode(): float(v) for k, v in found[v_index * len(bucket_ids) + b_index].items()}
            if not fields.get("n"):
                continue
            for key, value in fields.items():
                total[key] = total.get(key, 0.0) + value
            series.append({"version": version, "at": utc_iso(bucket * settings.monitoring_bucket_s),
                           **scores(fields, task)})
        if total.get("n"):
            versions.append({"version": version, "served": version == served,
                             "holdout_score": meta.get("holdout_score"), "scoring": meta.get("scoring"),
                             **scores(total, task)})
    return {"model": name, "task": task, "served_version": served, "since": utc_iso(since),
            "until": utc_iso(until), "bucket_s": settings.monitoring_bucket_s, "versions": versions,
            "series": series, "skipped": skips}


def scores(fields: dict[str, float], task: str) -> dict[str, Any]:
    n = fields["n"]
    if task == "classification":
        return {"rows": int(n), "accuracy": fields.get("correct", 0.0) / n}
    sse, y, y2 = fields.get("sq", 0.0), fields.get("y", 0.0), fields.get("y2", 0.0)
    sst = y2 - y * y / n
    return {"rows": int(n), "mae": fields.get("abs", 0.0) / n, "rmse": math.sqrt(sse / n),
            "r2": (1 - sse / sst) if n >= 2 and sst > 1e-12 else None}
