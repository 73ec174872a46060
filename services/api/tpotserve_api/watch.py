"""Watching a served model over HTTP: its input drift and its live quality.

    GET  /models/<name>/drift      (and /drift for the default model)
    POST /models/<name>/feedback   (and /feedback): feedback.py
    GET  /models/<name>/quality    (and /quality)

The counts come from ``live.py`` (every API worker adds to the same Redis keys, so
any worker answers for all); the statistics from ``tpotserve.drift``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from flask import request
from flask_restful import Resource
from prometheus_client.core import GaugeMetricFamily, Metric

from tpotserve import live
from tpotserve.errors import InvalidInput, NoReference, TpotServeError
from tpotserve.settings import Settings

from . import dataplane
from .context import ctx
from .feedback import Feedback
from .metrics import ScrapeCollector
from .queue import redis_errors


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


# --- drift ---------------------------------------------------------------------------
def drift_report(name: str | None, version: str | None) -> dict[str, Any]:
    """Live rows of a version (the served one by default) against its training profile."""
    context = ctx()
    model = dataplane.served(name)
    since, until = window(context.settings)
    return {"model": model.name, **drift_figures(context, model.name, version or model.version, since, until),
            "served": (version or model.version) == model.version}


def drift_figures(context: Any, name: str, version: str, since: float, until: float) -> dict[str, Any]:
    with redis_errors("drift"):
        return live.drift_figures(context.registry.store(name), context.queue.redis, context.settings, name,
                                  version, since, until)


class Drift(Resource):
    def get(self, name: str | None = None) -> dict:
        return drift_report(name, request.args.get("version"))


# --- live quality -------------------------------------------------------------------
def quality_report(name: str | None) -> dict[str, Any]:
    context = ctx()
    model = dataplane.served(name)
    since, until = window(context.settings)
    return quality_figures(context, model.name, model.version, model.meta.task, since, until)


def quality_figures(context: Any, name: str, served: str, task: str, since: float, until: float) -> dict[str, Any]:
    with redis_errors("quality"):
        return live.quality_figures(context.registry.store(name), context.queue.redis, context.settings, name,
                                    served, task, since, until)


class Quality(Resource):
    def get(self, name: str | None = None) -> dict:
        return quality_report(name)


class MonitoringCollector(ScrapeCollector):
    """Drift and live quality of every model's served version as Prometheus gauges, computed at
    scrape time from Redis (the counts are shared by all workers, so any one can answer; no
    multiprocess gauge files)."""

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
        for name in self.model_names():
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


def register(api: Any) -> None:
    api.add_resource(Drift, "/drift", "/models/<string:name>/drift")
    api.add_resource(Feedback, "/feedback", "/models/<string:name>/feedback")
    api.add_resource(Quality, "/quality", "/models/<string:name>/quality")
