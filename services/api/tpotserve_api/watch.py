"""Watching a served model over HTTP: its input drift, feedback on its answers, its live quality.

    GET  /models/<name>/drift      (and /drift for the default model)
    POST /models/<name>/feedback   (and /feedback)
    GET  /models/<name>/quality    (and /quality)

The counts come from ``live.py`` (every API worker adds to the same Redis keys, so
any worker answers for all); the statistics from ``tpotserve.drift``. Feedback takes the
predict scope: whoever may ask for a prediction may say whether it was right.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timezone
from collections.abc import Iterator
from typing import Any

import numpy as np
from flask import request
from flask_restful import Resource
from prometheus_client.core import GaugeMetricFamily, Metric
from redis.exceptions import RedisError

from tpotserve.clock import utc_iso
from tpotserve import live
from tpotserve.errors import InvalidInput, NoReference, QueueUnavailable, TpotServeError
from tpotserve.settings import Settings, keeps_feedback_rows

from . import dataplane
from .auth import require_predict
from .context import ctx
from .http_io import json_body
from .predict_request import parse_predict

MAX_FEEDBACK_ITEMS = 10_000


# --- the window a request asks about -------------------------------------------------
def window(settings: Settings) -> tuple[float, float]:
    """(since, until) in epoch seconds, from ``?window=<seconds>`` or ``?since=<ISO 8601 | epoch>``."""
    until = time.time()
    raw_since, raw_window = request.args.get("since"), request.args.get("window")
    if raw_since is not None and raw_window is not None:
        raise InvalidInput("give either window or since, not both", field="since")
    if raw_since is not None:
        since = _instant(raw_since)
        if since > until:
            raise InvalidInput("since is in the future", field="since")
        return max(since, until - settings.monitoring_retention_s), until
    seconds: float = settings.drift_window_s
    if raw_window is not None:
        try:
            seconds = int(raw_window)
        except ValueError:
            raise InvalidInput(f"window must be a whole number of seconds, got {raw_window[:40]!r}",
                               field="window") from None
        if not 1 <= seconds <= settings.monitoring_retention_s:
            raise InvalidInput(f"window must be 1 to {settings.monitoring_retention_s} seconds (MONITORING_"
                               f"RETENTION_S), got {seconds}", field="window")
    return until - seconds, until


def _instant(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"since must be an ISO 8601 time or epoch seconds, got {raw[:40]!r}",
                           field="since") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()


def _redis(action: str):  # noqa: ANN202 - a context manager
    class _Guard:
        def __enter__(self) -> None:
            return None

        def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
            if isinstance(exc, RedisError):
                raise QueueUnavailable(f"{action} needs Redis, which is unavailable: {type(exc).__name__}") from exc
            return False

    return _Guard()


# --- drift ---------------------------------------------------------------------------
def drift_report(name: str | None, version: str | None) -> dict[str, Any]:
    """Live rows of a version (the served one by default) against its training profile."""
    context = ctx()
    model = dataplane.served(name)
    since, until = window(context.settings)
    return {"model": model.name, **drift_figures(context, model.name, version or model.version, since, until),
            "served": (version or model.version) == model.version}


def drift_figures(context: Any, name: str, version: str, since: float, until: float) -> dict[str, Any]:
    with _redis("drift"):
        return live.drift_figures(context.registry.store(name), context.queue.redis, context.settings, name,
                                  version, since, until)


class Drift(Resource):
    def get(self, name: str | None = None) -> dict:
        return drift_report(name, request.args.get("version"))


# --- feedback ------------------------------------------------------------------------
def _items(body: Any) -> tuple[list[Any], list[Any]]:
    """(id items, whole rows) of a feedback body."""
    if isinstance(body, list):
        return body, []
    if not isinstance(body, dict) or not set(body) <= {"feedback", "rows"} or not body:
        raise InvalidInput('send [{"id": ..., "label" | "value": ...}, ...], or {"feedback": [...]} and/or '
                           '{"rows": [{<features>..., <target>: <truth>}]}', field=None)
    items, rows = body.get("feedback", []), body.get("rows", [])
    for key, value in (("feedback", items), ("rows", rows)):
        if not isinstance(value, list):
            raise InvalidInput(f"{key!r} must be a list", field=key)
    return items, rows


def _truth(item: dict[str, Any]) -> Any:
    for key in ("label", "value", "target"):
        if key in item:
            return item[key]
    return None


def _match_class(truth: Any, classes: list[Any]) -> tuple[bool, Any, str]:
    """(ok, the class, why not): ``truth`` as one of ``classes``, or as its text."""
    if isinstance(truth, bool) or not isinstance(truth, (str, int, float)):
        return False, None, "wrong label type: a class label is a string or a number"
    for c in classes:
        if type(c) is not bool and c == truth and (isinstance(c, str) == isinstance(truth, str)):
            return True, c, ""
    by_text = {str(c): c for c in classes}
    if str(truth) in by_text:
        return True, by_text[str(truth)], ""
    return False, None, "not a class of the model"


def _numeric(truth: Any) -> tuple[bool, float, str]:
    if isinstance(truth, bool) or not isinstance(truth, (int, float)) or not math.isfinite(truth):
        return False, 0.0, "wrong value type: a regression target is a finite number"
    return True, float(truth), ""


class _Scorer:
    """Adds feedback into the quality counters of (version, bucket), in one pipeline."""

    def __init__(self, model_name: str, task: str, settings: Settings) -> None:
        self.model, self.task, self.settings = model_name, task, settings
        self.adds: dict[tuple[str, int], dict[str, float]] = {}

    def add(self, version: str, at: float, predicted: Any, truth: Any) -> None:
        bucket = int(at // self.settings.monitoring_bucket_s)
        fields = self.adds.setdefault((version, bucket), {})
        fields["n"] = fields.get("n", 0) + 1
        if self.task == "classification":
            fields["correct"] = fields.get("correct", 0) + int(predicted == truth)
        else:
            error = float(predicted) - truth
            for key, value in (("abs", abs(error)), ("sq", error * error), ("y", truth), ("y2", truth * truth)):
                fields[key] = fields.get(key, 0.0) + value

    def write(self, pipe: Any) -> None:
        for (version, bucket), fields in self.adds.items():
            key = live.quality_key(self.model, version, bucket)
            for name, value in fields.items():
                pipe.hincrbyfloat(key, name, value)
            pipe.expire(key, self.settings.monitoring_retention_s)


class _Paired:
    """Adds feedback on rows the shadow answered too into the pair's paired counters
    (``live.shadow_paired_key``): both versions judged on the same labelled rows."""

    def __init__(self, model_name: str, task: str, settings: Settings) -> None:
        self.model, self.task, self.settings = model_name, task, settings
        self.adds: dict[tuple[str, str], dict[str, float]] = {}

    def add(self, served: str, shadow: str, served_answer: Any, shadow_answer: Any, truth: Any) -> None:
        fields = self.adds.setdefault((served, shadow), {})
        if self.task == "classification":
            served_ok, shadow_ok = _same_label(served_answer, truth), _same_label(shadow_answer, truth)
            adds = {"n": 1, "ok_served": served_ok, "ok_shadow": shadow_ok, "b": int(shadow_ok and not served_ok),
                    "c": int(served_ok and not shadow_ok)}
        else:
            served_sq, shadow_sq = (float(served_answer) - truth) ** 2, (float(shadow_answer) - truth) ** 2
            d = served_sq - shadow_sq
            adds = {"n": 1, "sq_served": served_sq, "sq_shadow": shadow_sq, "d": d, "d2": d * d, "y": truth,
                    "y2": truth * truth}
        for key, value in adds.items():
            fields[key] = fields.get(key, 0) + value

    def write(self, pipe: Any) -> None:
        for (served, shadow), fields in self.adds.items():
            key = live.shadow_paired_key(self.model, served, shadow)
            for name, value in fields.items():
                pipe.hincrbyfloat(key, name, value)
            pipe.expire(key, self.settings.monitoring_retention_s)


def _same_label(answer: Any, truth: Any) -> int:
    return int(answer == truth or str(answer) == str(truth))


def _pair_with_shadow(redis: Any, settings: Settings, name: str, counted: list[tuple[str, dict, int, Any]],
                      paired: _Paired) -> None:
    """For each counted row the shadow answered too (same served version), add both answers."""
    if not counted:
        return
    found = live.find_answers(redis, settings, name, [c[0] for c in counted], key=live.shadow_answers_key)
    for (_, answer, row, truth), raw in zip(counted, found):
        if raw is None:
            continue
        theirs = json.loads(raw)
        if theirs.get("s") != answer["v"] or row not in theirs.get("r", []):
            continue
        paired.add(answer["v"], theirs["v"], answer["p"][row], theirs["p"][theirs["r"].index(row)], truth)


def feedback(name: str | None) -> dict[str, Any]:
    context = ctx()
    settings = context.settings
    require_predict(settings)
    items, rows = _items(json_body())
    if len(items) + len(rows) > MAX_FEEDBACK_ITEMS:
        raise InvalidInput(f"at most {MAX_FEEDBACK_ITEMS} items per request", field="feedback")
    model = dataplane.served(name)
    store = context.registry.store(model.name)
    redis = context.queue.redis
    scorer = _Scorer(model.name, model.meta.task, settings)
    paired = _Paired(model.name, model.meta.task, settings)
    counted: list[tuple[str, dict, int, Any]] = []
    skipped: list[dict[str, Any]] = []
    labelled: list[bytes] = []
    keep = keeps_feedback_rows(settings, model.name)
    classes_of: dict[str, list[Any]] = {}

    def skip(index: int, what: str, reason: str, item_id: Any = None) -> None:
        skipped.append({"index": index, "in": what, **({"id": item_id} if item_id is not None else {}),
                        "reason": reason})

    # By id: join the truth to what the stack answered.
    wanted: list[tuple[int, str, str, int, Any]] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
            skip(index, "feedback", 'each item needs an "id" (a string: X-Prediction-ID, or it with ":<row>")')
            continue
        truth = _truth(item)
        if truth is None:
            skip(index, "feedback", 'give the truth as "label" (classification) or "value" (regression)', item["id"])
            continue
        prediction, _, row = item["id"].rpartition(":")
        if not prediction or not row.isdigit():
            prediction, row = item["id"], "0"
        wanted.append((index, item["id"], prediction, int(row), truth))
    with _redis("feedback"):
        answers = live.find_answers(redis, settings, model.name, [w[2] for w in wanted])
        checked = []
        for (index, item_id, prediction, row, truth), raw in zip(wanted, answers):
            if raw is None:
                skip(index, "feedback", "unknown or expired id (answers are kept FEEDBACK_TTL_S)", item_id)
                continue
            answer = json.loads(raw)
            if row >= len(answer["p"]):
                skip(index, "feedback", f"that answer has {len(answer['p'])} rows", item_id)
                continue
            ok, value, why = _checked_truth(truth, model.meta.task, answer["v"], store, classes_of)
            if not ok:
                skip(index, "feedback", why, item_id)
                continue
            checked.append((index, item_id, live.fed_key(model.name, prediction, row), answer, row, value,
                            prediction))
        # Each answered row counts once, however often its feedback is sent.
        first_time = _first_times(redis, [c[2] for c in checked], settings.feedback_ttl_s)
        for (index, item_id, _, answer, row, value, prediction), new in zip(checked, first_time):
            if not new:
                skip(index, "feedback", "feedback for this id was already counted", item_id)
                continue
            scorer.add(answer["v"], answer["t"], answer["p"][row], value)
            counted.append((prediction, answer, row, value))
            if keep and "x" in answer:
                labelled.append(_labelled(model, answer["x"][row], value, answer["v"]))

        # Whole rows: the served model answers them now, and the truth is joined at once.
        if rows:
            target = model.meta.target
            features_rows, truths, indexes = [], [], []
            for index, row_item in enumerate(rows):
                if not isinstance(row_item, dict) or target not in row_item:
                    skip(index, "rows", f"each row needs its features and the target {target!r}")
                    continue
                ok, value, why = _checked_truth(row_item[target], model.meta.task, model.version, store, classes_of)
                if not ok:
                    skip(index, "rows", why)
                    continue
                features_rows.append({k: v for k, v in row_item.items() if k != target})
                truths.append(value)
                indexes.append(index)
            if features_rows:
                parsed = parse_predict({"instances": features_rows}, model.feature_names, MAX_FEEDBACK_ITEMS)
                X = np.asarray(parsed.rows, dtype=float)
                predictions, _ = model.infer(X)
                now = time.time()
                for i, (predicted, value) in enumerate(zip(predictions, truths)):
                    scorer.add(model.version, now, predicted, value)
                    if keep:
                        labelled.append(_labelled(model, X[i].tolist(), value, model.version))
        _pair_with_shadow(redis, settings, model.name, counted, paired)
        pipe = redis.pipeline(transaction=False)
        scorer.write(pipe)
        counted = sum(int(f["n"]) for f in scorer.adds.values())
        if counted:
            pipe.incrby(live.feedback_total_key(model.name), counted)
        paired.write(pipe)
        if skipped:
            for entry in skipped:
                pipe.hincrby(live.skips_key(model.name), entry["reason"], 1)
        if labelled:
            pipe.lpush(live.labelled_key(model.name), *labelled)
            pipe.ltrim(live.labelled_key(model.name), 0, settings.feedback_keep_rows_max - 1)
        pipe.execute()
    accepted = sum(int(f["n"]) for f in scorer.adds.values())
    return {"model": model.name, "accepted": accepted, "skipped": skipped, "kept_rows": len(labelled),
            "paired_with_shadow": sum(int(f["n"]) for f in paired.adds.values())}


def _first_times(redis: Any, keys: list[str], ttl: int) -> list[bool]:
    """For each key, whether this is the first feedback for it (SET NX), in one round trip."""
    if not keys:
        return []
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.set(key, 1, nx=True, ex=ttl)
    seen: set[str] = set()
    out = []
    for key, created in zip(keys, pipe.execute()):
        out.append(bool(created) and key not in seen)  # twice in one request: the first counts
        seen.add(key)
    return out


def _checked_truth(truth: Any, task: str, version: str, store: Any, classes_of: dict[str, list[Any]]
                   ) -> tuple[bool, Any, str]:
    if task != "classification":
        return _numeric(truth)
    if version not in classes_of:
        try:
            classes_of[version] = list(store.read_meta(version).get("classes") or [])
        except Exception:  # noqa: BLE001 - a pruned version: judge by the served classes
            classes_of[version] = []
    return _match_class(truth, classes_of[version])


def _labelled(model: Any, row: list[float], truth: Any, version: str) -> bytes:
    return json.dumps({"features": dict(zip(model.feature_names, row)), "target": truth, "version": version,
                       "at": utc_iso()}, separators=(",", ":")).encode()


class Feedback(Resource):
    def post(self, name: str | None = None) -> dict:
        return feedback(name)


# --- live quality -------------------------------------------------------------------
def quality_report(name: str | None) -> dict[str, Any]:
    context = ctx()
    model = dataplane.served(name)
    since, until = window(context.settings)
    return quality_figures(context, model.name, model.version, model.meta.task, since, until)


def quality_figures(context: Any, name: str, served: str, task: str, since: float, until: float) -> dict[str, Any]:
    with _redis("quality"):
        return live.quality_figures(context.registry.store(name), context.queue.redis, context.settings, name,
                                    served, task, since, until)


class Quality(Resource):
    def get(self, name: str | None = None) -> dict:
        return quality_report(name)


class MonitoringCollector:
    """Drift and live quality of every model's served version as Prometheus gauges, computed at
    scrape time from Redis (the counts are shared by all workers, so any one can answer; no
    multiprocess gauge files)."""

    def __init__(self, context: Any) -> None:
        self.context = context

    def collect(self) -> Iterator[Metric]:
        js = GaugeMetricFamily("tpotserve_drift_js_distance", "Jensen-Shannon distance (base 2) of each feature's "
                               "live rows (DRIFT_WINDOW_S) from the served version's training rows.",
                               labels=["model", "feature"])
        psi = GaugeMetricFamily("tpotserve_drift_psi", "Population stability index of each feature's live rows "
                                "(DRIFT_WINDOW_S) against the served version's training rows.",
                                labels=["model", "feature"])
        rows = GaugeMetricFamily("tpotserve_drift_live_rows", "Rows the served version answered in DRIFT_WINDOW_S.",
                                 labels=["model"])
        share = GaugeMetricFamily("tpotserve_drift_drifted_share", "Share of features whose drift exceeds "
                                  "DRIFT_JS_THRESHOLD or DRIFT_PSI_THRESHOLD (absent without enough rows).",
                                  labels=["model"])
        quality = GaugeMetricFamily("tpotserve_live_quality", "Live quality from feedback on answers of the last "
                                    "DRIFT_WINDOW_S: accuracy, or mae / rmse / r2, per version.",
                                    labels=["model", "version", "metric"])
        feedback_rows = GaugeMetricFamily("tpotserve_feedback_rows", "Answers with feedback in DRIFT_WINDOW_S.",
                                          labels=["model", "version"])
        until = time.time()
        since = until - self.context.settings.drift_window_s
        for name in self._names():
            try:
                store = self.context.registry.store(name)
                pointer = store.read_pointer_quietly()
                if pointer is None:
                    continue
                task = store.read_meta(pointer.version).get("task")
                try:
                    drift = drift_figures(self.context, name, pointer.version, since, until)
                except NoReference:
                    drift = None
                live = quality_figures(self.context, name, pointer.version, str(task), since, until)
            except (TpotServeError, OSError, ValueError):
                continue  # Redis down or a store in flux: no gauges this scrape, never a failed scrape
            if drift is not None:
                rows.add_metric([name], drift["rows"])
                for feature in drift["features"]:
                    if feature["js_distance"] is not None:
                        js.add_metric([name, feature["feature"]], feature["js_distance"])
                        psi.add_metric([name, feature["feature"]], feature["psi"])
                if drift["enough_rows"] and drift["drifted_share"] is not None:
                    share.add_metric([name], drift["drifted_share"])
            for entry in live["versions"]:
                feedback_rows.add_metric([name, entry["version"]], entry["rows"])
                for metric in ("accuracy", "mae", "rmse", "r2"):
                    if entry.get(metric) is not None:
                        quality.add_metric([name, entry["version"], metric], entry[metric])
        yield from (js, psi, rows, share, quality, feedback_rows)

    def _names(self) -> list[str]:
        try:
            return self.context.registry.names()
        except OSError:
            return []


def register(api: Any) -> None:
    api.add_resource(Drift, "/drift", "/models/<string:name>/drift")
    api.add_resource(Feedback, "/feedback", "/models/<string:name>/feedback")
    api.add_resource(Quality, "/quality", "/models/<string:name>/quality")
