"""The scheduler: every SCHEDULER_INTERVAL_S it reads each model's retraining policy
(``policy.json``, tpotserve.policy) and enqueues the trainings it calls for, on the
training queue, as POST /retrain would: a due schedule, or a trigger (drift, a drop in
live quality, N new feedback rows) once the model's minimum spacing allows.

Why not RQ's own scheduling: RQ 3's ``rq.cron`` takes its jobs from a config file read at
start (a policy changed through the API would need a restart) and keeps no shared record
of what two schedulers did; ``enqueue_at`` fixes the payload at enqueue time, so a policy
edited before the due time would still run the old one. What fits is RQ's unique job id:
``enqueue(..., job_id=..., unique=True)`` is one atomic step in Redis, and the id names
the model and the due time, so two schedulers, or one restarted mid-minute, never enqueue
the same training twice. Triggers share one Redis key per model, set NX with the policy's
spacing as expiry: whichever scheduler sets it enqueues, and nobody else until it expires.

The scheduler only reads the model volume and enqueues; the workers write (a promotion is
a normal activation on the control queue).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.exceptions import DuplicateJobError

from tpotserve import jobs, live, logs, policy as policies, shadow
from tpotserve.clock import utc_iso
from tpotserve.datasets import DatasetStore
from tpotserve.errors import NoReference, TpotServeError
from tpotserve.policy import Policy
from tpotserve.registry import ModelRegistry
from tpotserve.schema import RetrainRequest, TrainingPayload
from tpotserve.settings import Settings, load_settings
from tpotserve.store import POLICY_NAME, ModelStore
from tpotserve.training import plan_training

log = logging.getLogger("tpotserve_trainer.scheduler")

LIVE_SCORE = {
    # The holdout's scorer -> how to read the same figure from live quality (higher is better).
    "accuracy": lambda live: live["accuracy"],
    "r2": lambda live: live["r2"],
    "neg_mean_absolute_error": lambda live: -live["mae"],
    "neg_root_mean_squared_error": lambda live: -live["rmse"],
    "neg_mean_squared_error": lambda live: -live["rmse"] ** 2,
}


def job_id(model: str, kind: str, at: float) -> str:
    """RQ job ids allow letters, digits, '_' and '-': a model name's '.' becomes '_'."""
    return f"auto-{re.sub(r'[^A-Za-z0-9_-]', '_', model)}-{kind}-{int(at)}"


class Scheduler:
    def __init__(self, settings: Settings, redis: Redis | None = None) -> None:
        self.settings = settings
        self.redis = redis or jobs.redis_client(settings, socket_timeout_s=max(settings.redis_timeout_s, 5.0))
        self.registry = ModelRegistry.from_settings(settings)
        self.datasets = DatasetStore.from_settings(settings)
        self.queue = Queue(jobs.TRAINING_QUEUE, connection=self.redis)
        self.stop = threading.Event()

    # --- the loop -------------------------------------------------------------------
    def run(self) -> None:
        log.info("scheduler started", extra={"fields": {"event": "scheduler_started",
                                                        "interval_s": self.settings.scheduler_interval_s}})
        while not self.stop.is_set():
            started = time.time()
            try:
                self.tick(started)
            except RedisError as exc:  # Redis down: nothing can be enqueued; try again next tick
                log.warning("scheduler tick skipped: Redis unavailable",
                            extra={"fields": {"event": "scheduler_redis_down", "error": str(exc)}})
            else:
                self._heartbeat()
            # Ticks on whole multiples of the interval, so two schedulers look at the same instants.
            interval = self.settings.scheduler_interval_s
            self.stop.wait(max(0.0, (math.floor(time.time() / interval) + 1) * interval - time.time()))

    def _heartbeat(self) -> None:
        path = Path(self.settings.scheduler_heartbeat_file)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(utc_iso())
        except OSError:
            pass

    def tick(self, now: float) -> list[dict[str, Any]]:
        """Evaluate every model's policy once; the state of each (also kept in Redis)."""
        states = []
        for name in self.registry.names():
            try:
                state = self.evaluate(name, now)
            except RedisError:
                raise
            except (TpotServeError, OSError, ValueError) as exc:  # one broken model must not stop the others
                state = {"model": name, "checked_at": utc_iso(now), "error": f"{type(exc).__name__}: {exc}"}
                log.warning("policy not evaluated", extra={"fields": {"event": "policy_error", "model": name,
                                                                      "error": state["error"]}})
            if state is not None:
                self.redis.set(policies.state_key(name), json.dumps(state), ex=policies.STATE_TTL_S)
                states.append(state)
        self.redis.set(policies.TICK_KEY, now)
        return states

    # --- one model --------------------------------------------------------------------
    def evaluate(self, name: str, now: float) -> dict[str, Any] | None:
        store = self.registry.store(name)
        document = store.read_json(POLICY_NAME)
        if document is None:
            return None
        policy = Policy.model_validate(document["policy"])
        state: dict[str, Any] = {"model": name, "checked_at": utc_iso(now), "enabled": policy.enabled,
                                 "next_due": None, "next_due_epoch": None, "triggers": {}, "enqueued": []}
        if not policy.enabled:
            return state
        set_at = float(document.get("set_at_epoch") or 0.0)
        if policy.schedule is not None:
            self._schedule(name, store, policy, set_at, now, state)
        self._triggers(name, store, policy, now, state)
        self._shadow(name, store, policy, now, state)
        state["last"] = {kind.decode(): json.loads(raw) for kind, raw in self.redis.hgetall(policies.last_key(name)).items()}
        return state

    def _schedule(self, name: str, store: ModelStore, policy: Policy, set_at: float, now: float,
                  state: dict[str, Any]) -> None:
        schedule = policy.schedule
        assert schedule is not None
        upcoming = policies.next_due(schedule, set_at, now)
        state["next_due"], state["next_due_epoch"] = utc_iso(upcoming), upcoming
        due = policies.last_due(schedule, set_at, now)
        if due is None:
            return
        mark_key = f"{policies.KEY_PREFIX}schedule-mark:{name}"
        mark = self.redis.get(mark_key)
        if mark is not None and float(mark) >= due:
            return  # this due time was enqueued already (by us or another scheduler)
        what = {"cron": schedule.cron, "timezone": schedule.timezone} if schedule.cron else {"every_s": schedule.every_s}
        trigger = {"kind": "schedule", "due": utc_iso(due), "late_s": round(now - due, 1), **what}
        try:
            enqueued = self._enqueue(name, store, policy, trigger, job_id(name, "schedule", due))
        except TpotServeError as exc:  # e.g. its data set is gone: said once per due time, not every tick
            enqueued = None
            state["error"] = f"the training due {utc_iso(due)} was not enqueued: {exc.message}"
            log.warning("scheduled training not enqueued", extra={"fields": {
                "event": "scheduler_refused", "model": name, "error": exc.message}})
        # Recorded whether we enqueued it or another scheduler had: either way it is done.
        self.redis.set(mark_key, due)
        if enqueued is not None:
            state["enqueued"].append(enqueued)

    def _triggers(self, name: str, store: ModelStore, policy: Policy, now: float, state: dict[str, Any]) -> None:
        triggers = policy.triggers
        if triggers.drift is None and triggers.quality is None and triggers.feedback is None:
            return
        pointer = store.read_pointer_quietly()
        if pointer is None:
            state["triggers"]["note"] = "no served version yet"
            return
        served = store.read_meta(pointer.version)
        figures: dict[str, dict[str, Any]] = {}
        if triggers.drift is not None:
            figures["drift"] = self._drift(name, store, pointer.version, triggers.drift, now)
        if triggers.quality is not None:
            figures["quality"] = self._quality(name, store, served, triggers.quality, now)
        if triggers.feedback is not None:
            figures["feedback"] = self._feedback(name, triggers.feedback)
        state["triggers"] = figures
        fired = [kind for kind, result in figures.items() if result.get("fired")]
        if not fired:
            return
        # One triggered training per spacing period, whichever scheduler asks first.
        spacing = max(int(policy.min_spacing_s), int(math.ceil(self.settings.scheduler_interval_s)), 1)
        if not self.redis.set(policies.spacing_key(name), utc_iso(now), nx=True, ex=spacing):
            ttl = self.redis.ttl(policies.spacing_key(name))
            state["held_by_spacing"] = {"fired": fired, "until": utc_iso(now + max(ttl, 0)),
                                        "min_spacing_s": policy.min_spacing_s}
            return
        kind = fired[0]
        trigger = {"kind": kind, "figures": figures[kind], "also": fired[1:], "served_version": pointer.version}
        try:
            enqueued = self._enqueue(name, store, policy, trigger, job_id(name, kind, now))
        except TpotServeError as exc:  # the spacing still holds: a refused training is not retried every tick
            enqueued = None
            state["error"] = f"the {kind} training was not enqueued: {exc.message}"
            log.warning("triggered training not enqueued", extra={"fields": {
                "event": "scheduler_refused", "model": name, "error": exc.message}})
        if enqueued is not None:
            state["enqueued"].append(enqueued)
        if triggers.feedback is not None:
            self.redis.set(policies.feedback_mark_key(name), figures["feedback"]["total"])

    def _drift(self, name: str, store: ModelStore, version: str, trigger: Any, now: float) -> dict[str, Any]:
        window = trigger.window_s or self.settings.drift_window_s
        settings = self.settings.model_copy(update={"drift_min_rows": trigger.min_rows or self.settings.drift_min_rows})
        try:
            report = live.drift_figures(store, self.redis, settings, name, version, now - window, now)
        except NoReference as exc:
            return {"fired": False, "note": exc.message}
        share = report["drifted_share"]
        fired = bool(report["enough_rows"]) and share is not None and share >= trigger.share
        drifted = [f["feature"] for f in report["features"] if f.get("verdict") == "drift"]
        return {"fired": fired, "rows": report["rows"], "enough_rows": report["enough_rows"],
                "drifted_share": share, "threshold": trigger.share, "drifted_features": drifted,
                "window_s": window}

    def _quality(self, name: str, store: ModelStore, served: dict[str, Any], trigger: Any,
                 now: float) -> dict[str, Any]:
        window = trigger.window_s or self.settings.drift_window_s
        scoring, holdout = served.get("scoring"), served.get("holdout_score")
        if scoring not in LIVE_SCORE or not isinstance(holdout, (int, float)):
            return {"fired": False, "note": f"the live score cannot be compared with the holdout's {scoring!r}"}
        report = live.quality_figures(store, self.redis, self.settings, name, served["version"],
                                      str(served.get("task")), now - window, now)
        entry = next((v for v in report["versions"] if v["served"]), None)
        rows = entry["rows"] if entry else 0
        score = LIVE_SCORE[scoring](entry) if entry and rows >= 2 else None
        fired = rows >= trigger.min_rows and score is not None and holdout - score > trigger.margin
        return {"fired": fired, "rows": rows, "min_rows": trigger.min_rows, "scoring": scoring,
                "holdout_score": holdout, "live_score": score, "margin": trigger.margin, "window_s": window}

    def _feedback(self, name: str, trigger: Any) -> dict[str, Any]:
        total = int(self.redis.get(live.feedback_total_key(name)) or 0)
        # The first look starts the count: rows before the policy was set do not count.
        self.redis.set(policies.feedback_mark_key(name), total, nx=True)
        mark = int(self.redis.get(policies.feedback_mark_key(name)) or 0)
        new = max(total - mark, 0)
        return {"fired": new >= trigger.rows, "new_rows": new, "threshold": trigger.rows, "total": total}

    def _shadow(self, name: str, store: ModelStore, policy: Policy, now: float, state: dict[str, Any]) -> None:
        """Promotion on live evidence (opt-in: ``policy.promote``): the shadow's decision from
        tpotserve.shadow, acted on by a control job, so the store is written by a worker only."""
        if shadow.read(store) is None:
            return
        report = shadow.report(store, self.redis, self.settings, name, now)
        evaluation = report.get("evaluation")
        version = report["shadow"]["version"]
        state["shadow"] = {"version": version, "promotion_enabled": policy.promote is not None,
                           **({"decision": evaluation["decision"], "reason": evaluation["reason"]}
                              if evaluation else {})}
        if policy.promote is None or evaluation is None or evaluation["decision"] == "wait":
            return
        since = int(shadow.epoch(report["shadow"]["since"]))
        control = Queue(jobs.CONTROL_QUEUE, connection=self.redis)
        details = {**evaluation, "served_version": report["served_version"], "shadow_version": version}
        if evaluation["decision"] == "promote":
            func, kwargs = jobs.PROMOTE_SHADOW_FUNC, {"model": name, "version": version, "details": details,
                                                     "by": "scheduler"}
        else:
            func, kwargs = jobs.CLEAR_SHADOW_FUNC, {"model": name, "reason": evaluation["reason"], "by": "scheduler"}
        unique_id = job_id(name, f"{evaluation['decision']}-{version}", since)
        try:
            control.enqueue(func, job_id=unique_id, unique=True, **jobs.control_enqueue_args(kwargs, {
                "kind": evaluation["decision"], "model": name, "version": version,
                "trigger": {"kind": evaluation["decision"], "figures": details}}))
        except DuplicateJobError:
            return  # the other scheduler, or this one a tick ago
        self.redis.hincrby(policies.FIRED_KEY, f"{name}|{evaluation['decision']}", 1)
        state["enqueued"].append({"job_id": unique_id, "trigger": evaluation["decision"]})
        log.info("shadow decided", extra={"fields": {"event": f"scheduler_{evaluation['decision']}", "model": name,
                                                     "version": version, "reason": evaluation["reason"]}})

    # --- enqueueing ---------------------------------------------------------------------
    def _enqueue(self, name: str, store: ModelStore, policy: Policy, trigger: dict[str, Any],
                 unique_id: str) -> dict[str, Any] | None:
        """A training of ``name`` under ``unique_id``; None when that id was enqueued already."""
        request = RetrainRequest(model=name, **policy.budget.model_dump(exclude_none=True))
        payload = plan_training(request, self.settings, self.datasets, reason=trigger["kind"], store=store)
        payload = TrainingPayload.model_validate({
            **payload.model_dump(), "trigger": {**trigger, "at": utc_iso()},
            "feedback_rows": policy.data.max_feedback_rows if policy.data.feedback_rows else 0,
        })
        try:
            job = self.queue.enqueue(jobs.RETRAIN_FUNC, job_id=unique_id, unique=True, **jobs.training_enqueue_args(
                payload, self.settings.job_timeout_margin_s, kind=payload.reason, model=name, trigger=payload.trigger))
        except DuplicateJobError:
            log.info("already enqueued", extra={"fields": {"event": "scheduler_duplicate", "model": name,
                                                           "job_id": unique_id}})
            return None
        self.redis.hincrby(policies.FIRED_KEY, f"{name}|{trigger['kind']}", 1)
        self.redis.hset(policies.last_key(name), trigger["kind"],
                        json.dumps({"job_id": job.id, "at": utc_iso(), "trigger": payload.trigger}))
        log.info("training enqueued", extra={"fields": {"event": "scheduler_enqueued", "model": name,
                                                        "job_id": job.id, "trigger": payload.trigger}})
        return {"job_id": job.id, "trigger": trigger["kind"]}


# --- the process ----------------------------------------------------------------------
def healthy(settings: Settings, now: float | None = None) -> bool:
    """The heartbeat file is younger than three intervals (and a minute's grace)."""
    try:
        age = (now or time.time()) - os.stat(settings.scheduler_heartbeat_file).st_mtime
    except OSError:
        return False
    return age < 3 * settings.scheduler_interval_s + 60


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    settings = load_settings()
    if args == ["--check"]:  # the healthcheck of compose and the native supervisor
        return 0 if healthy(settings) else 1
    logs.configure("scheduler")
    scheduler = Scheduler(settings)
    signal.signal(signal.SIGTERM, lambda *_: scheduler.stop.set())
    try:
        scheduler.run()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
