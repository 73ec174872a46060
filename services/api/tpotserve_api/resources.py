"""The JSON API's resources. Thin: parse, call the data plane or the domain, answer JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from flask import Response, request
from flask_restful import Resource

from tpotserve import contract
from tpotserve.errors import (ContractConflict, InvalidInput, NotConfigured, PayloadTooLarge, TpotServeError, Unauthorized,
                              UnsupportedMedia)
from tpotserve.schema import parse_activate_request, parse_retrain_request
from tpotserve.training import plan_training

from . import dataplane
from .auth import require_admin, require_predict
from .context import ctx as _ctx
from .http_io import PREDICTION_ID_HEADER, json_answer, json_body, prediction_id, read_limited
from .predict_request import parse_predict, range_warnings

ACTIVATE_WAIT_S = 0.5
"""The longest an activate holds this API worker: an idle control worker answers in
milliseconds (bench/activate.py); a busy or dead one gets a 202 and the job to follow."""


class Predict(Resource):
    """``POST /predict``: the default model (the book's request and answer)."""

    def post(self) -> Response:
        return self.answer(None)

    def answer(self, name: str | None) -> Response:
        settings = _ctx().settings
        require_predict(settings)
        body = json_body()
        model = dataplane.served(name)
        parsed = parse_predict(body, model.feature_names, settings.max_batch_rows)
        # parse_predict checked every value (finite, within MAX_MAGNITUDE, the model's order).
        prediction = prediction_id()
        result = dataplane.infer(model, np.asarray(parsed.rows, dtype=float), prediction)
        predictions, probabilities = result.predictions, model.probability_dicts(result.proba)
        warnings = range_warnings(parsed.rows, model.feature_schema, single=parsed.single)
        headers = {"X-Model-Version": model.version, PREDICTION_ID_HEADER: prediction}
        if name is not None:
            headers["X-Model-Name"] = model.name
        if parsed.single:
            # The book's answer: In_<feature> echoes, Prediction, Probability.
            answer: dict[str, Any] = {f"In_{k}": v for k, v in parsed.originals[0].items()}
            answer["Prediction"] = predictions[0]
            if probabilities is not None:
                answer["Probability"] = probabilities[0][str(predictions[0])]
                answer["probabilities"] = probabilities[0]
            answer["model_version"] = model.version
            if warnings:
                answer["warnings"] = warnings
            return json_answer(answer, headers)
        answer = {"predictions": predictions, "model_version": model.version}
        if probabilities is not None:
            answer["probabilities"] = probabilities
        if warnings:
            answer["warnings"] = warnings
        return json_answer(answer, headers)


class Retrain(Resource):
    def post(self) -> tuple[dict, int, dict]:
        ctx = _ctx()
        require_admin(ctx.settings)
        request_body = parse_retrain_request(json_body(required=False))
        # The data is checked here, so bad data gets a 4xx and nothing is enqueued.
        store = ctx.registry.store(request_body.model)
        payload = plan_training(request_body, ctx.settings, ctx.datasets, store=store)
        job = ctx.queue.enqueue_retrain(payload, queue_behind=request_body.queue)
        location = f"/jobs/{job.id}"
        return (
            {"job_id": job.id, "status": "queued", "location": location, "request": payload.model_dump()},
            202,
            {"Location": location},
        )


class JobStatus(Resource):
    def get(self, job_id: str) -> dict:
        ctx = _ctx()
        return ctx.queue.describe(ctx.queue.fetch(job_id))

    def delete(self, job_id: str) -> tuple[dict, int]:
        """Cancel a queued job or stop a running one; the served model is untouched."""
        ctx = _ctx()
        require_admin(ctx.settings)
        job = ctx.queue.fetch(job_id)
        status = ctx.queue.cancel(job)
        return {"id": job.id, "status": status}, 200 if status == "canceled" else 202


class Datasets(Resource):
    def get(self) -> dict:
        return {"datasets": _ctx().datasets.list()}

    def post(self) -> tuple[dict, int, dict]:
        ctx = _ctx()
        require_admin(ctx.settings)
        raw, filename = _csv_upload(ctx.settings.max_body_bytes)
        meta, created = ctx.datasets.save(raw, filename)
        location = f"/datasets/{meta['id']}"
        return {**meta, "created": created}, 201 if created else 200, {"Location": location}


class Dataset(Resource):
    def get(self, dataset_id: str) -> dict:
        return _ctx().datasets.meta(dataset_id)


def _csv_upload(limit: int) -> tuple[bytes, str | None]:
    """The CSV of an upload: multipart field ``file``, or a ``text/csv`` body."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge()
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("file")
        if upload is None:
            raise InvalidInput("send the CSV as the multipart field 'file'", field="file")
        stream, filename = upload.stream, upload.filename or None
    elif request.mimetype in ("text/csv", "application/csv", "text/plain"):
        stream, filename = request.stream, None
    else:
        raise UnsupportedMedia(
            f"send a CSV as multipart/form-data (field 'file') or as text/csv (got {request.mimetype or 'none'!r})"
        )
    return read_limited(stream, limit), filename


class Models(Resource):
    """``GET /models``: the default model's versions."""

    def get(self) -> dict:
        return _versions(_ctx().registry.store())


class CurrentModel(Resource):
    """``GET /models/current``: the default model as this worker serves it."""

    def get(self) -> tuple[dict, int, dict]:
        ctx = _ctx()
        model = ctx.models.get(None)
        body = {**model.meta.to_json(), "version": model.version, **_contract_view(ctx.registry.store(), model),
                "serving": model.serving}
        return body, 200, {"X-Model-Version": model.version}


class Activate(Resource):
    """``POST /models/<version>/activate``: roll the default model to a stored version."""

    def post(self, version: str) -> tuple[dict, int, dict]:
        return _activate(None, version)


class NamedPredict(Predict):
    def post(self, name: str) -> Response:  # type: ignore[override]
        return self.answer(name)


class NamedModel(Resource):
    def get(self, name: str) -> tuple[dict, int, dict]:
        ctx = _ctx()
        store = dataplane.existing_store(name)
        model = ctx.models.get(name)
        body = {**model.meta.to_json(), "model": model.name, "version": model.version, **_contract_view(store, model),
                "serving": model.serving}
        return body, 200, {"X-Model-Version": model.version, "X-Model-Name": model.name}


class NamedVersions(Resource):
    def get(self, name: str) -> dict:
        return {"model": name, **_versions(dataplane.existing_store(name))}


class NamedActivate(Resource):
    def post(self, name: str, version: str) -> tuple[dict, int, dict]:
        return _activate(dataplane.model_name(name), version)


class Registry(Resource):
    """``GET /registry``: every model on the volume, the default first."""

    def get(self) -> dict:
        ctx = _ctx()
        held = ctx.models.status()
        models = []
        for name in ctx.registry.names():
            store = ctx.registry.store(name)
            pointer = store.read_pointer_quietly()
            meta: dict[str, Any] = {}
            if pointer is not None:
                try:
                    meta = store.read_meta(pointer.version)
                except TpotServeError:
                    meta = {}
            history = contract.history(store.list_versions(), pointer.version if pointer else None)
            models.append({
                "name": name,
                "default": name == ctx.registry.default_name,
                "current_version": pointer.version if pointer else None,
                "versions": len(store.list_version_ids()),
                **{key: meta.get(key) for key in ("task", "dataset", "target", "scoring", "holdout_score",
                                                  "created_at")},
                "loaded": held.get(name, {}).get("model_version") is not None,
                **history.to_json(),
            })
        return {"default": ctx.registry.default_name, "max_loaded_models": ctx.settings.max_loaded_models,
                "models": models}


def _versions(store: Any) -> dict:
    pointer = store.read_pointer()
    current = pointer.version if pointer else None
    metas = store.list_versions()
    history = contract.history(metas, current)
    others = set(history.other_versions)
    versions = [
        {**meta, "current": meta.get("version") == current, "other_contract": meta.get("version") in others}
        for meta in metas
    ]
    return {"current": current, "versions": versions, **history.to_json(), "activations": store.activations(20)}


def _contract_view(store: Any, model: Any) -> dict:
    """The served version's ``contract``, and whether the model's stored history mixes contracts."""
    history = contract.history(store.list_versions(), model.version)
    served = contract.contract_of(model.meta.to_json())
    return {**history.to_json(), "contract": served.to_json() if served else None}


def _activate(name: str | None, version: str) -> tuple[dict, int, dict]:
    ctx = _ctx()
    require_admin(ctx.settings)
    asked = parse_activate_request(json_body(required=False), request.args.get("replace_contract"))
    store = ctx.registry.existing_store(name) if name is not None else ctx.registry.store()
    meta = store.read_meta(version)  # 404 before anything is enqueued
    _check_activation_contract(store, meta, name or ctx.registry.default_name, asked.replace_contract)
    job = ctx.queue.activate(meta["version"], model=name, wait_s=ACTIVATE_WAIT_S,
                             replace_contract=asked.replace_contract)
    view = ctx.queue.describe(job)
    location = f"/jobs/{job.id}"
    named = {"model": name} if name is not None else {}
    if view["status"] == "finished":
        return {**named, "version": version, "activated": True, "job_id": job.id}, 200, {"Location": location}
    if view["status"] == "failed":
        failed = ctx.queue.fetch(job.id).meta  # what the control worker recorded
        if failed.get("error_code") == ContractConflict.code:  # the served version changed meanwhile
            raise ContractConflict(str(failed.get("error")), **(failed.get("error_details") or {}))
        raise InvalidInput(f"could not activate {version!r}: {view['error']}", field="version")
    # The worker is busy or slow: the activation is queued and will happen.
    return {**named, "version": version, "activated": False, "job_id": job.id, "status": view["status"]}, 202, {
        "Location": location
    }


def _check_activation_contract(store: Any, meta: dict, model: str, replace: bool) -> None:
    """409 (ContractConflict) before anything is enqueued when ``meta``'s version would change
    the served contract; the control worker checks again under the store's lock."""
    new = contract.contract_of(meta)
    pointer = store.read_pointer_quietly()
    if new is None or pointer is None or pointer.version == meta.get("version"):
        return
    try:
        served = store.read_meta(pointer.version)
    except TpotServeError:
        return  # nothing readable is served: nothing to keep
    contract.guard(served, new, model=model, action=f"activating {meta.get('version')}", replace=replace)


OPENAPI_PATH = Path(__file__).with_name("openapi.json")


class OpenApi(Resource):
    """The API's contract (OpenAPI 3), kept true by tests/unit/test_openapi.py."""

    def get(self) -> dict:
        return json.loads(OPENAPI_PATH.read_text())


class AdminCheck(Resource):
    """For nginx's auth_request in front of admin pages (the RQ dashboard): 204 or 401."""

    def get(self) -> tuple[str, int]:
        try:
            require_admin(_ctx().settings)
        except NotConfigured as exc:
            # auth_request only understands 2xx, 401 and 403: no key configured means closed.
            raise Unauthorized(exc.message) from exc
        return "", 204


class Healthz(Resource):
    def get(self) -> dict:
        return {"status": "ok"}


class Readyz(Resource):
    def get(self) -> tuple[dict, int]:
        ctx = _ctx()
        body = {
            **ctx.models.default.status(),
            "queue": "ok" if ctx.queue.ping() else "unavailable",
            # Which Gunicorn worker answered: lets operators (and tests) see every worker's version.
            "worker_pid": os.getpid(),
        }
        ready = body["model_loaded"]
        body["status"] = "ready" if ready else "not_ready"
        return body, 200 if ready else 503
