"""The Open Inference Protocol (V2, REST), so standard clients (KServe's, MLServer's,
Triton's HTTP client) can talk to the served model.

A thin adapter over the same data plane as ``POST /predict``: which model
(:func:`tpotserve_api.dataplane.served`), validate (:func:`parse_infer`, into the float
matrix the model takes), predict (:func:`tpotserve_api.dataplane.infer`). Errors are the protocol's ``{"error": "..."}`` (400
for a bad request), mapped in ``tpotserve_api.errors`` like every other error.

Every named model on the volume is served under its name (the default model under
``MODEL_NAME``, ``iris``), and of each the version its ``current.json`` names; another
stored version answers 404 until it is activated.

    GET  /v2                                           server metadata
    GET  /v2/health/live, /v2/health/ready             liveness, readiness
    GET  /v2/models/<name>[/versions/<v>]              model metadata (inputs from the feature schema)
    GET  /v2/models/<name>[/versions/<v>]/ready        model readiness
    POST /v2/models/<name>[/versions/<v>]/infer        inference

An infer request carries either one FP32/FP64 tensor of shape ``[rows, features]`` (its
``data`` nested or flat in row-major order, columns in the model's feature order), or, with
``parameters.content_type: "pd"`` (on the request or its inputs), one input per feature,
named for it, of shape ``[rows]`` or ``[rows, 1]``. The answer has a ``predict`` output and,
for a classifier, ``predict_proba`` (``[rows, classes]``, columns in the order of the model
metadata's ``predict_proba`` output); ``outputs`` in the request picks among them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from importlib.metadata import version as package_version
from itertools import chain
from typing import Any

import numpy as np
from flask import Response, request
from flask_restful import Resource

from tpotserve.errors import InvalidInput, UnsupportedMedia

from . import dataplane
from .auth import require_predict
from .context import ctx
from .http_io import PREDICTION_ID_HEADER, body_bytes, json_answer, prediction_id
from .limits import MAX_MAGNITUDE
from .loaded_model import LoadedModel
from .predict_request import parse_json

FLOAT_TYPES = ("FP32", "FP64")
OUTPUTS = ("predict", "predict_proba")


# --- parsing an infer request --------------------------------------------------------

@dataclass
class InferRequest:
    X: np.ndarray
    id: str
    outputs: list[str] | None


def parse_infer(body: Any, feature_names: list[str], max_rows: int) -> InferRequest:
    """Validate a V2 infer request into the model's float matrix; InvalidInput names the problem."""
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object with 'inputs'", field=None)
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string", field="id")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, dict) for i in inputs):
        raise InvalidInput("'inputs' must be a non-empty list of tensors", field="inputs")
    parameters = _parameters(body, "parameters")
    columns = parameters.get("content_type") == "pd" or any(
        _parameters(tensor, f"inputs[{i}].parameters").get("content_type") == "pd" for i, tensor in enumerate(inputs)
    )
    if columns or len(inputs) > 1:
        X = _from_columns(inputs, feature_names, max_rows)
    else:
        X = _from_tensor(inputs[0], len(feature_names), max_rows)
    return InferRequest(X=X, id=request_id or str(uuid.uuid4()), outputs=_requested_outputs(body.get("outputs")))


def _parameters(holder: dict, field: str) -> dict:
    value = holder.get("parameters")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"'{field}' must be an object", field=field)
    return value


def _requested_outputs(outputs: Any) -> list[str] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise InvalidInput("'outputs' must be a list of objects with a 'name'", field="outputs")
    names = [o.get("name") for o in outputs]
    for index, name in enumerate(names):
        if name not in OUTPUTS:
            raise InvalidInput(f"unknown output {name!r}: the outputs are {', '.join(OUTPUTS)}",
                               field=f"outputs[{index}].name")
    return names


def _shape(tensor: dict, field: str) -> list[int]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidInput(f"'{field}.shape' must be a list of non-negative integers", field=f"{field}.shape")
    return shape


def _datatype(tensor: dict, field: str) -> None:
    datatype = tensor.get("datatype")
    if datatype not in FLOAT_TYPES:
        raise InvalidInput(f"'{field}.datatype' must be FP32 or FP64 (got {str(datatype)[:20]!r})",
                           field=f"{field}.datatype")


def _values(tensor: dict, field: str) -> list[Any]:
    """``data`` flattened: a flat list, or a list of lists (one level of nesting, row-major)."""
    data = tensor.get("data")
    if not isinstance(data, list):
        raise InvalidInput(f"'{field}.data' must be a list", field=f"{field}.data")
    if data and all(isinstance(row, list) for row in data):
        data = list(chain.from_iterable(data))
    return data


def _floats(values: list[Any], field: str) -> np.ndarray:
    """The values as float64: numbers only (never bool), finite, within float32's range."""
    if not set(map(type, values)) <= {float, int}:
        bad = next(v for v in values if type(v) not in (float, int))
        raise InvalidInput(f"'{field}.data' must hold numbers only (found {str(bad)[:40]!r})", field=f"{field}.data")
    try:
        X = np.asarray(values, dtype=float)
    except OverflowError:  # an integer beyond float64
        raise InvalidInput(f"'{field}.data' holds a number beyond float32's range", field=f"{field}.data") from None
    if X.size and not (np.isfinite(X).all() and float(np.abs(X).max()) <= MAX_MAGNITUDE):
        raise InvalidInput(f"'{field}.data' must hold finite numbers within float32's range",
                           field=f"{field}.data")
    return X


def _rows(rows: int, max_rows: int, field: str) -> None:
    if rows == 0:
        raise InvalidInput(f"'{field}' has no rows", field=field)
    if rows > max_rows:
        raise InvalidInput(f"'{field}' has {rows} rows; the limit is {max_rows}", field=field)


def _from_tensor(tensor: dict, width: int, max_rows: int) -> np.ndarray:
    field = "inputs[0]"
    _datatype(tensor, field)
    shape = _shape(tensor, field)
    if len(shape) != 2 or shape[1] != width:
        raise InvalidInput(
            f"'{field}.shape' must be [rows, {width}] (the model's {width} features), got {shape}; "
            "or send one input per feature with parameters.content_type \"pd\"",
            field=f"{field}.shape",
        )
    _rows(shape[0], max_rows, f"{field}.shape")
    values = _values(tensor, field)
    if len(values) != shape[0] * width:
        raise InvalidInput(f"'{field}.data' has {len(values)} values; shape {shape} needs {shape[0] * width}",
                           field=f"{field}.data")
    return _floats(values, field).reshape(shape[0], width)


def _from_columns(inputs: list[dict], feature_names: list[str], max_rows: int) -> np.ndarray:
    by_name: dict[str, tuple[int, dict]] = {}
    for index, tensor in enumerate(inputs):
        name = tensor.get("name")
        field = f"inputs[{index}]"
        if name not in feature_names:
            raise InvalidInput(f"unknown input {str(name)[:100]!r}: the model's features are {', '.join(feature_names)}",
                               field=f"{field}.name")
        if name in by_name:
            raise InvalidInput(f"input {name!r} is given twice", field=f"{field}.name")
        by_name[name] = (index, tensor)
    missing = [name for name in feature_names if name not in by_name]
    if missing:
        raise InvalidInput(f"missing input {missing[0]!r}: send one input per feature", field="inputs")
    columns = []
    rows: int | None = None
    for name in feature_names:
        index, tensor = by_name[name]
        field = f"inputs[{index}]"
        _datatype(tensor, field)
        shape = _shape(tensor, field)
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise InvalidInput(f"'{field}.shape' must be [rows] or [rows, 1], got {shape}", field=f"{field}.shape")
        if rows is None:
            rows = shape[0]
            _rows(rows, max_rows, f"{field}.shape")
        elif shape[0] != rows:
            raise InvalidInput(f"'{field}' has {shape[0]} rows, the inputs before it {rows}", field=f"{field}.shape")
        values = _values(tensor, field)
        if len(values) != rows:
            raise InvalidInput(f"'{field}.data' has {len(values)} values; shape {shape} needs {rows}",
                               field=f"{field}.data")
        columns.append(_floats(values, field))
    return np.column_stack(columns)


def _infer_body() -> Any:
    """The request's JSON. V2 clients may send no Content-Type (tritonclient does not); the
    binary tensor extension is refused with a clear reason rather than misread as JSON."""
    raw = body_bytes()
    if "Inference-Header-Content-Length" in request.headers:
        raise InvalidInput("binary tensor data (Inference-Header-Content-Length) is not supported: send the "
                           "tensors as JSON (tritonclient: binary_data=False)", field=None)
    if request.mimetype not in ("", "application/json"):
        raise UnsupportedMedia(f"send JSON (Content-Type: application/json), got {request.mimetype!r}", field=None)
    return parse_json(raw)


# --- answers ---------------------------------------------------------------------------

def _label_datatype(values: list[Any]) -> str:
    if all(isinstance(v, str) for v in values):
        return "BYTES"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "INT64"
    return "FP64"


def _outputs_metadata(model: LoadedModel) -> list[dict[str, Any]]:
    if not model.is_classifier:
        return [{"name": "predict", "datatype": "FP64", "shape": [-1]}]
    classes = model.meta.classes or []
    outputs = [{"name": "predict", "datatype": _label_datatype(classes), "shape": [-1]}]
    if hasattr(model.model, "predict_proba"):
        outputs.append({"name": "predict_proba", "datatype": "FP64", "shape": [-1, len(classes)],
                        "parameters": {"classes": ",".join(str(c) for c in classes)}})
    return outputs


def _json(answer: dict[str, Any], status: int = 200, version: str | None = None) -> Response:
    return json_answer(answer, {"X-Model-Version": version} if version else {}, status)


class ServerMetadata(Resource):
    def get(self) -> Response:
        return _json({"name": "tpotserve", "version": package_version("tpotserve-api"), "extensions": []})


class ServerLive(Resource):
    def get(self) -> Response:
        return _json({"live": True})


class ServerReady(Resource):
    def get(self) -> Response:
        ready = ctx().models.default.status()["model_loaded"]
        return _json({"ready": ready}, 200 if ready else 503)


class ModelMetadata(Resource):
    def get(self, name: str, version: str | None = None) -> Response:
        model = dataplane.served(name, version)
        inputs = [{"name": feature, "datatype": "FP64", "shape": [-1]} for feature in model.feature_names]
        return _json(
            {
                "name": name,
                "versions": [model.version],
                "platform": "sklearn",
                "inputs": inputs,
                "outputs": _outputs_metadata(model),
                "parameters": {"content_type": "pd", "task": model.meta.task},
            },
            version=model.version,
        )


class ModelReady(Resource):
    def get(self, name: str, version: str | None = None) -> Response:
        model = dataplane.served(name, version)
        return _json({"name": name, "ready": True}, version=model.version)


class ModelInfer(Resource):
    def post(self, name: str, version: str | None = None) -> Response:
        settings = ctx().settings
        require_predict(settings)
        body = _infer_body()
        model = dataplane.served(name, version)
        parsed = parse_infer(body, model.feature_names, settings.max_batch_rows)
        prediction = prediction_id()
        result = dataplane.infer(model, parsed.X, prediction)
        predictions, proba = result.predictions, result.proba
        rows = len(predictions)
        outputs = []
        wanted = parsed.outputs or list(OUTPUTS)
        if "predict" in wanted:
            outputs.append({"name": "predict", "datatype": _label_datatype(predictions) if model.is_classifier
                            else "FP64", "shape": [rows], "data": predictions})
        if "predict_proba" in wanted:
            if proba is None:
                if parsed.outputs is not None:  # asked for by name: say why there is none
                    raise InvalidInput(f"model {name!r} has no predict_proba output "
                                       f"({'a regressor' if not model.is_classifier else 'no probabilities'})",
                                       field="outputs")
            else:
                outputs.append({"name": "predict_proba", "datatype": "FP64", "shape": [rows, proba.shape[1]],
                                "data": proba.ravel().tolist()})
        response = _json({"model_name": name, "model_version": model.version, "id": parsed.id,
                          "outputs": outputs}, version=model.version)
        response.headers[PREDICTION_ID_HEADER] = prediction
        return response


def add_routes(api: Any) -> None:
    api.add_resource(ServerMetadata, "/v2")
    api.add_resource(ServerLive, "/v2/health/live")
    api.add_resource(ServerReady, "/v2/health/ready")
    api.add_resource(ModelMetadata, "/v2/models/<string:name>", "/v2/models/<string:name>/versions/<string:version>")
    api.add_resource(ModelReady, "/v2/models/<string:name>/ready",
                     "/v2/models/<string:name>/versions/<string:version>/ready")
    api.add_resource(ModelInfer, "/v2/models/<string:name>/infer",
                     "/v2/models/<string:name>/versions/<string:version>/infer")

