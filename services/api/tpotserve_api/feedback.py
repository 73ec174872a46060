"""Feedback on a served model's answers: ``POST /models/<name>/feedback`` (and ``/feedback``).

The truth for earlier answers, by the ``X-Prediction-ID`` the stack gave them (``live.py`` keeps
the answers FEEDBACK_TTL_S), or whole rows with their target, answered now. Each answered row
counts once into the live quality counters of the version that answered it (every API worker
adds to the same Redis keys), and once into the shadow's paired counters when the shadow
answered it too; with FEEDBACK_KEEP_ROWS the labelled rows are kept for a policy's training.
Feedback takes the predict scope: whoever may ask for a prediction may say whether it was right.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np
from flask_restful import Resource

from tpotserve import live
from tpotserve.clock import utc_iso
from tpotserve.errors import InvalidInput
from tpotserve.settings import Settings, keeps_feedback_rows

from . import dataplane
from .auth import require_predict
from .context import ctx
from .http_io import json_body
from .predict_request import parse_predict
from .queue import redis_errors

MAX_FEEDBACK_ITEMS = 10_000


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
    """``POST /models/<name>/feedback``: the truth for earlier answers (by prediction id) and for
    whole rows (answered now), counted into the served model's live quality."""
    context = ctx()
    require_predict(context.settings)
    items, rows = _items(json_body())
    if len(items) + len(rows) > MAX_FEEDBACK_ITEMS:
        raise InvalidInput(f"at most {MAX_FEEDBACK_ITEMS} items per request", field="feedback")
    batch = _Batch(context, dataplane.served(name))
    wanted = batch.by_id(items)
    with redis_errors("feedback"):
        counted = batch.count(batch.join(wanted))
        batch.answer_rows(rows)
        _pair_with_shadow(batch.redis, batch.settings, batch.model.name, counted, batch.paired)
        batch.write()
    return batch.result()


class _Batch:
    """One feedback request: the items it skips (and why), the rows it scores, the labelled rows it keeps."""

    def __init__(self, context: Any, model: Any) -> None:
        self.model, self.settings, self.redis = model, context.settings, context.queue.redis
        self.store = context.registry.store(model.name)
        self.scorer = _Scorer(model.name, model.meta.task, self.settings)
        self.paired = _Paired(model.name, model.meta.task, self.settings)
        self.keep = keeps_feedback_rows(self.settings, model.name)
        self.skipped: list[dict[str, Any]] = []
        self.labelled: list[bytes] = []
        self.classes_of: dict[str, list[Any]] = {}

    def skip(self, index: int, what: str, reason: str, item_id: Any = None) -> None:
        self.skipped.append({"index": index, "in": what, **({"id": item_id} if item_id is not None else {}),
                             "reason": reason})

    def truth(self, value: Any, version: str) -> tuple[bool, Any, str]:
        return _checked_truth(value, self.model.meta.task, version, self.store, self.classes_of)

    def by_id(self, items: list[Any]) -> list[tuple[int, str, str, int, Any]]:
        """(index, id, prediction id, row, truth) of each well-formed id item."""
        wanted = []
        for index, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
                self.skip(index, "feedback", 'each item needs an "id" (a string: X-Prediction-ID, or it with ":<row>")')
                continue
            truth = _truth(item)
            if truth is None:
                self.skip(index, "feedback", 'give the truth as "label" (classification) or "value" (regression)',
                          item["id"])
                continue
            prediction, _, row = item["id"].rpartition(":")
            if not prediction or not row.isdigit():
                prediction, row = item["id"], "0"
            wanted.append((index, item["id"], prediction, int(row), truth))
        return wanted

    def join(self, wanted: list[tuple[int, str, str, int, Any]]) -> list[tuple[int, str, str, dict, int, Any, str]]:
        """The truth joined to what the stack answered, for the ids it still keeps."""
        answers = live.find_answers(self.redis, self.settings, self.model.name, [w[2] for w in wanted])
        checked = []
        for (index, item_id, prediction, row, truth), raw in zip(wanted, answers):
            if raw is None:
                self.skip(index, "feedback", "unknown or expired id (answers are kept FEEDBACK_TTL_S)", item_id)
                continue
            answer = json.loads(raw)
            if row >= len(answer["p"]):
                self.skip(index, "feedback", f"that answer has {len(answer['p'])} rows", item_id)
                continue
            ok, value, why = self.truth(truth, answer["v"])
            if not ok:
                self.skip(index, "feedback", why, item_id)
                continue
            checked.append((index, item_id, live.fed_key(self.model.name, prediction, row), answer, row, value,
                            prediction))
        return checked

    def count(self, checked: list[tuple[int, str, str, dict, int, Any, str]]) -> list[tuple[str, dict, int, Any]]:
        """Score each answered row once, however often its feedback is sent: (prediction, answer, row, truth)."""
        counted = []
        first_time = _first_times(self.redis, [c[2] for c in checked], self.settings.feedback_ttl_s)
        for (index, item_id, _, answer, row, value, prediction), new in zip(checked, first_time):
            if not new:
                self.skip(index, "feedback", "feedback for this id was already counted", item_id)
                continue
            self.scorer.add(answer["v"], answer["t"], answer["p"][row], value)
            counted.append((prediction, answer, row, value))
            if self.keep and "x" in answer:
                self.labelled.append(_labelled(self.model, answer["x"][row], value, answer["v"]))
        return counted

    def answer_rows(self, rows: list[Any]) -> None:
        """Whole rows: the served model answers them now, and the truth is joined at once."""
        target = self.model.meta.target
        features_rows, truths = [], []
        for index, row_item in enumerate(rows):
            if not isinstance(row_item, dict) or target not in row_item:
                self.skip(index, "rows", f"each row needs its features and the target {target!r}")
                continue
            ok, value, why = self.truth(row_item[target], self.model.version)
            if not ok:
                self.skip(index, "rows", why)
                continue
            features_rows.append({k: v for k, v in row_item.items() if k != target})
            truths.append(value)
        if not features_rows:
            return
        parsed = parse_predict({"instances": features_rows}, self.model.feature_names, MAX_FEEDBACK_ITEMS)
        X = np.asarray(parsed.rows, dtype=float)
        predictions, _ = self.model.infer(X)
        now = time.time()
        for i, (predicted, value) in enumerate(zip(predictions, truths)):
            self.scorer.add(self.model.version, now, predicted, value)
            if self.keep:
                self.labelled.append(_labelled(self.model, X[i].tolist(), value, self.model.version))

    def write(self) -> None:
        """Every count of the request in one round trip."""
        name = self.model.name
        pipe = self.redis.pipeline(transaction=False)
        self.scorer.write(pipe)
        if self.accepted:
            pipe.incrby(live.feedback_total_key(name), self.accepted)
        self.paired.write(pipe)
        for entry in self.skipped:
            pipe.hincrby(live.skips_key(name), entry["reason"], 1)
        if self.labelled:
            pipe.lpush(live.labelled_key(name), *self.labelled)
            pipe.ltrim(live.labelled_key(name), 0, self.settings.feedback_keep_rows_max - 1)
        pipe.execute()

    @property
    def accepted(self) -> int:
        return sum(int(f["n"]) for f in self.scorer.adds.values())

    def result(self) -> dict[str, Any]:
        return {"model": self.model.name, "accepted": self.accepted, "skipped": self.skipped,
                "kept_rows": len(self.labelled), "paired_with_shadow": sum(int(f["n"]) for f in self.paired.adds.values())}


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


