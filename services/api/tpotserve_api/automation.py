"""A model's retraining policy over HTTP, and what the scheduler made of it.

    GET    /models/<name>/policy   the stored policy and the scheduler's last view of it
    PUT    /models/<name>/policy   set it (the control worker writes policy.json)
    DELETE /models/<name>/policy   remove it: the model trains only on request again

Admin scope for all three: a policy spends the trainer's time. The scheduler
(``tpotserve_trainer.scheduler``) reads policy.json on its next tick, so a PUT is effective
within SCHEDULER_INTERVAL_S without restarting anything.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from flask_restful import Resource
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from redis.exceptions import RedisError

from tpotserve import policy as policies
from tpotserve.errors import InvalidInput, QueueUnavailable
from tpotserve.store import POLICY_NAME

from . import dataplane
from .auth import require_admin
from .context import ctx
from .http_io import json_body
from .metrics import ScrapeCollector

POLICY_WAIT_S = 5.0


def scheduler_state(redis: Any, model: str) -> dict[str, Any] | None:
    """The scheduler's last evaluation of ``model``'s policy (None: not yet, or Redis down)."""
    try:
        raw = redis.get(policies.state_key(model))
    except RedisError:
        return None
    return json.loads(raw) if raw else None


def policy_view(name: str) -> dict[str, Any]:
    context = ctx()
    store = dataplane.existing_store(name)
    stored = store.read_json(POLICY_NAME)
    return {"model": name, "policy": (stored or {}).get("policy"), "set_at": (stored or {}).get("set_at"),
            "scheduler": scheduler_state(context.queue.redis, name)}


class ModelPolicy(Resource):
    def get(self, name: str) -> dict:
        require_admin(ctx().settings)
        return policy_view(name)

    def put(self, name: str) -> tuple[dict, int, dict]:
        context = ctx()
        require_admin(context.settings)
        dataplane.existing_store(name)  # 404 for an unknown model before anything is enqueued
        checked = policies.parse_policy(json_body(), context.settings, name)
        return _written(name, checked.model_dump(mode="json"))

    def delete(self, name: str) -> tuple[dict, int, dict]:
        require_admin(ctx().settings)
        dataplane.existing_store(name)
        return _written(name, None)


def _written(name: str, policy: dict[str, Any] | None) -> tuple[dict, int, dict]:
    context = ctx()
    job = context.queue.set_policy(name, policy, wait_s=POLICY_WAIT_S)
    view = context.queue.describe(job)
    location = f"/jobs/{job.id}"
    if view["status"] == "finished":
        return policy_view(name), 200, {"Location": location}
    if view["status"] == "failed":
        raise InvalidInput(f"the policy of {name!r} could not be written: {view['error']}", field=None)
    # The control worker is busy or down: the write is queued and will happen.
    return {"model": name, "written": False, "job_id": job.id, "status": view["status"]}, 202, {"Location": location}


class AutomationCollector(ScrapeCollector):
    """The scheduler's figures as Prometheus metrics, read from Redis at scrape time (the
    scheduler is one process without an HTTP port; any API worker can answer)."""

    def collect(self) -> Iterator[Metric]:
        due = GaugeMetricFamily("tpotserve_policy_next_due_timestamp_seconds",
                                "When the model's schedule is next due (Unix time), as the scheduler last saw it.",
                                labels=["model"])
        fired = CounterMetricFamily("tpotserve_automatic_trainings",
                                    "Trainings the scheduler enqueued, by model and trigger "
                                    "(schedule, drift, quality, feedback).", labels=["model", "trigger"])
        checked = GaugeMetricFamily("tpotserve_scheduler_last_tick_timestamp_seconds",
                                    "When a scheduler last evaluated the policies (Unix time).")
        try:
            redis = self.context.queue.redis
            counts = redis.hgetall(policies.FIRED_KEY)
            tick = redis.get(policies.TICK_KEY)
            names = self.context.registry.names()
            states = redis.mget([policies.state_key(name) for name in names]) if names else []
        except (RedisError, OSError, QueueUnavailable):
            return
        for raw_key, raw_count in counts.items():
            model, _, trigger = raw_key.decode().rpartition("|")
            fired.add_metric([model, trigger], int(raw_count))
        for name, raw in zip(names, states):
            state = json.loads(raw) if raw else {}
            if state.get("next_due_epoch") is not None:
                due.add_metric([name], state["next_due_epoch"])
        if tick:
            checked.add_metric([], float(tick))
        yield from (due, fired, checked)


def register(api: Any) -> None:
    api.add_resource(ModelPolicy, "/models/<string:name>/policy")
