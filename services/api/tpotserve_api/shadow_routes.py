"""Shadow candidates over HTTP, and their gauges.

    POST   /models/<name>/versions/<version>/shadow   (and /shadow/<version>)   admin: put it in shadow
    DELETE /models/<name>/shadow                      (and /shadow)             admin: take it out
    GET    /models/<name>/shadow                      (and /shadow)             the report

The API mounts the model volume read-only: setting and clearing are control jobs
(``tpotserve.jobs.SET_SHADOW_FUNC`` / ``CLEAR_SHADOW_FUNC``), checked here first so a refused
version gets its 404 or 409 before anything is enqueued. The report and the gauges read the
pair's figures from Redis (``tpotserve.shadow``), so any worker answers for all.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from flask_restful import Resource
from prometheus_client.core import GaugeMetricFamily, Metric

from tpotserve import jobs, shadow
from tpotserve.errors import ContractConflict, Conflict, InvalidInput, NotFound

from . import dataplane
from .auth import require_admin
from .context import ctx
from .http_io import json_body
from .metrics import ScrapeCollector
from .queue import redis_errors

WAIT_S = 0.5
"""As long as an activate holds a worker (resources.ACTIVATE_WAIT_S)."""


def _store(name: str | None) -> tuple[str, Any]:
    context = ctx()
    if name is None:
        return context.registry.default_name, context.registry.existing_store(None)
    return dataplane.model_name(name), dataplane.existing_store(name)


def _share(body: Any) -> float | None:
    if body is None:
        return None
    if not isinstance(body, dict) or not set(body) <= {"share"}:
        raise InvalidInput('send nothing, or {"share": <a number in (0, 1]>}', field=None)
    share = body.get("share")
    if share is None:
        return None
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
        raise InvalidInput(f"share must be a number in (0, 1], got {share!r}", field="share")
    return float(share)


def _run(func: str, kwargs: dict[str, Any], what: str) -> tuple[dict, int, dict]:
    context = ctx()
    job = context.queue.control_job(func, kwargs, WAIT_S, meta={"kind": what, **{
        k: v for k, v in kwargs.items() if k in ("model", "version")}})
    view = context.queue.describe(job)
    location = f"/jobs/{job.id}"
    if view["status"] == "finished":
        return {**(view["result"] or {}), "job_id": job.id, "done": True}, 200, {"Location": location}
    if view["status"] == "failed":
        failed = context.queue.fetch(job.id).meta
        code, message, details = failed.get("error_code"), str(failed.get("error") or view["error"]), \
            failed.get("error_details") or {}
        if code == ContractConflict.code:
            raise ContractConflict(message, field="version", **details)
        for error in (Conflict, NotFound):  # the served version changed, or the version went, meanwhile
            if code == error.code:
                raise error(message, field="version")
        raise InvalidInput(f"{what} failed: {message}", field=None)
    return {**{k: v for k, v in kwargs.items() if k in ("model", "version")}, "job_id": job.id, "done": False,
            "status": view["status"]}, 202, {"Location": location}


def set_shadow(name: str | None, version: str) -> tuple[dict, int, dict]:
    context = ctx()
    require_admin(context.settings)
    share = _share(json_body(required=False))
    model, store = _store(name)
    meta = shadow.check_candidate(store, version, model)  # 404 / 409 before anything is enqueued
    if share is None:
        share = shadow.default_share(store, context.settings)
    kwargs = {"version": meta["version"], "share": share, "reason": "request", "by": "api",
              **({"model": model} if name is not None else {})}
    return _run(jobs.SET_SHADOW_FUNC, kwargs, "set_shadow")


def clear_shadow(name: str | None) -> tuple[dict, int, dict]:
    context = ctx()
    require_admin(context.settings)
    model, _ = _store(name)
    kwargs = {"reason": "request", "by": "api", **({"model": model} if name is not None else {})}
    return _run(jobs.CLEAR_SHADOW_FUNC, kwargs, "clear_shadow")


def shadow_report(name: str | None) -> dict[str, Any]:
    context = ctx()
    model, store = _store(name)
    with redis_errors("the shadow report"):
        return shadow.report(store, context.queue.redis, context.settings, model)


class NamedShadowVersion(Resource):
    def post(self, name: str, version: str) -> tuple[dict, int, dict]:
        return set_shadow(name, version)


class DefaultShadowVersion(Resource):
    def post(self, version: str) -> tuple[dict, int, dict]:
        return set_shadow(None, version)


class Shadow(Resource):
    def get(self, name: str | None = None) -> dict:
        return shadow_report(name)

    def delete(self, name: str | None = None) -> tuple[dict, int, dict]:
        return clear_shadow(name)


class ShadowCollector(ScrapeCollector):
    """Each model's shadow as gauges, computed at scrape time from Redis (as
    ``watch.MonitoringCollector``); ``version`` is the shadow version."""

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version", "served_version"]
        agreement = GaugeMetricFamily("tpotserve_shadow_agreement", "Share of the rows the shadow answered "
                                      "where it agrees with the served version (same label; regression: within "
                                      "0.1 training target std).", labels=labels)
        rows = GaugeMetricFamily("tpotserve_shadow_rows", "Rows the shadow answered beside the served version.",
                                 labels=labels)
        score = GaugeMetricFamily("tpotserve_shadow_live_score", "Live score of the served version and of the "
                                  "shadow on the same labelled rows: accuracy, or r2 for a regressor.",
                                  labels=[*labels, "role"])
        labelled = GaugeMetricFamily("tpotserve_shadow_labelled_rows", "Labelled rows both versions answered.",
                                     labels=labels)
        latency = GaugeMetricFamily("tpotserve_shadow_latency_seconds", "The shadow's predict time per sampled "
                                    "request, p50 and p95 from its histogram.", labels=[*labels, "quantile"])
        promote = GaugeMetricFamily("tpotserve_shadow_decision", "1 for the decision tpotserve.shadow.evaluate "
                                    "gives now (promote, wait, drop).", labels=[*labels, "decision"])
        for name in self.model_names():
            try:
                store = self.context.registry.store(name)
                report = shadow.report(store, self.context.queue.redis, self.context.settings, name, time.time())
            except Exception:  # noqa: BLE001 - Redis down or a store in flux: never a failed scrape
                continue
            figures = report.get("figures")
            if not figures:
                continue
            key = [name, figures["shadow_version"], figures["served_version"]]
            rows.add_metric(key, figures["rows"])
            if figures["agreement"] is not None:
                agreement.add_metric(key, figures["agreement"])
            for quantile, field in (("0.5", "p50_ms"), ("0.95", "p95_ms")):
                if figures["latency"][field] is not None:
                    latency.add_metric([*key, quantile], figures["latency"][field] / 1000)
            paired = figures["labelled"]
            labelled.add_metric(key, paired["rows"])
            for role in ("served", "shadow"):
                entry = paired.get(role) or {}
                value = entry.get("accuracy", entry.get("r2"))
                if value is not None:
                    score.add_metric([*key, role], value)
            for decision in shadow.DECISIONS:
                promote.add_metric([*key, decision], float(report["evaluation"]["decision"] == decision))
        yield from (agreement, rows, score, labelled, latency, promote)


def register(api: Any) -> None:
    api.add_resource(NamedShadowVersion, "/models/<string:name>/versions/<string:version>/shadow")
    api.add_resource(DefaultShadowVersion, "/shadow/<string:version>")
    api.add_resource(Shadow, "/shadow", "/models/<string:name>/shadow")
