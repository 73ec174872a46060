"""The application factory: ``create_app(settings)``."""

from __future__ import annotations

import logging
import os
import time

from flask import Flask, Response, g, request
from flask_restful import Api

from tpotserve import logs
from tpotserve.datasets import DatasetStore
from tpotserve.offline import disable_tpot_update_check
from tpotserve.settings import Settings, load_settings
from tpotserve.registry import ModelRegistry

from . import automation, documents, metrics, resources, shadow_routes, v2, watch
from .context import EXTENSION, AppContext
from .errors import to_response
from .model_pool import ModelPool
from .monitoring import Monitor
from .queue import JobQueue
from .shadow_runner import ShadowRunner


class JsonApi(Api):
    """Flask-RESTful, but every error goes through our one JSON handler."""

    def handle_error(self, e: Exception):  # noqa: ANN201 - flask-restful's signature
        return to_response(e)


def _preload_tpot() -> None:
    """Import tpot now, at worker start, not inside the first model swap.

    Unpickling a TPOT pipeline imports tpot (2-4 s); done here, a new
    version is served within the poll interval plus the load itself.
    """
    disable_tpot_update_check()
    try:
        import tpot  # noqa: F401
    except ImportError:  # an API built without tpot can still serve plain sklearn pipelines
        pass


def create_app(settings: Settings | None = None, *, poll: bool = True) -> Flask:
    """Build the API. Loads the default model (and others while there is room) before
    returning, so a worker that accepts requests already serves what the pointers name.
    ``poll`` False (tests): no model polling and no shadow runner thread."""
    settings = settings or load_settings()
    logs.configure("api")
    _preload_tpot()

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False

    app.extensions[EXTENSION] = _context(settings, poll)
    _add_routes(JsonApi(app, catch_all_404s=True))
    app.register_error_handler(Exception, to_response)
    metrics.init_app(app)
    _log_requests(app)
    return app


def _context(settings: Settings, poll: bool) -> AppContext:
    """What every request reads: the registry, the loaded models, the queue, the data sets,
    the monitor and the shadow runner."""
    # Refuses to build the app (so Gunicorn refuses to start) without a signing key,
    # unless the insecure development flag is set.
    registry = ModelRegistry.from_settings(settings)
    models = ModelPool(registry, settings.model_poll_interval_s, settings.max_loaded_models,
                       settings.compiled_inference)
    models.preload()
    if poll:
        models.start_polling()
    queue = JobQueue(settings)
    return AppContext(
        settings=settings,
        registry=registry,
        models=models,
        queue=queue,
        datasets=DatasetStore.from_settings(settings),
        monitor=Monitor(settings, queue.redis),
        shadows=ShadowRunner(settings, registry, queue.redis, background=poll),
    )


def _add_routes(api: JsonApi) -> None:
    api.add_resource(resources.Predict, "/predict")
    api.add_resource(resources.Retrain, "/retrain")
    api.add_resource(resources.JobStatus, "/jobs/<string:job_id>")
    api.add_resource(resources.Datasets, "/datasets")
    api.add_resource(resources.Dataset, "/datasets/<string:dataset_id>")
    api.add_resource(resources.Models, "/models")
    api.add_resource(resources.CurrentModel, "/models/current")
    api.add_resource(resources.Activate, "/models/<string:version>/activate")
    # Named models; the routes above are the default model's (/models/current is a static
    # route, so "current" is reserved as a name).
    api.add_resource(resources.Registry, "/registry")
    api.add_resource(resources.NamedPredict, "/models/<string:name>/predict")
    api.add_resource(resources.NamedModel, "/models/<string:name>")
    api.add_resource(resources.NamedVersions, "/models/<string:name>/versions")
    api.add_resource(resources.NamedActivate, "/models/<string:name>/versions/<string:version>/activate")
    documents.register(api)
    watch.register(api)
    automation.register(api)
    shadow_routes.register(api)
    api.add_resource(resources.Healthz, "/healthz")
    api.add_resource(resources.OpenApi, "/openapi.json")
    api.add_resource(resources.AdminCheck, "/auth/admin")
    api.add_resource(resources.Readyz, "/readyz")
    v2.add_routes(api)


def _log_requests(app: Flask) -> None:
    """One JSON line per request: request id, route, status, latency, model version."""
    access = logging.getLogger("tpotserve_api.access")

    @app.before_request
    def _start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _log(response: Response) -> Response:
        started = g.get("started")
        access.info(
            "request",
            extra={
                "fields": {
                    "request_id": request.headers.get("X-Request-ID"),
                    "method": request.method,
                    "route": request.url_rule.rule if request.url_rule else None,
                    "path": request.path,
                    "status": response.status_code,
                    "latency_ms": round((time.perf_counter() - started) * 1000, 2) if started else None,
                    "model_version": response.headers.get("X-Model-Version"),
                    "worker_pid": os.getpid(),
                }
            },
        )
        return response
