"""The Open Inference Protocol (V2) adapter, on the real app over a signed model: each
answer checked against the OpenAPI document, and against what POST /predict answers for
the same rows (one data plane)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
from flask import Flask
from sklearn.linear_model import LinearRegression

from tests.unit.test_openapi import CHECKS, FEATURES, make_app

BOOK = {"SepalLength": 5.1, "SepalWidth": 3.5, "PetalLength": 1.4, "PetalWidth": 0.2}
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.9, 3.1, 5.4, 2.1], [5.9, 2.8, 4.3, 1.3]]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    return make_app(tmp_path_factory.mktemp("v2"))


def call(app: Flask, method: str, path: str, template: str | None = None, body: Any = None, **path_parameters: str):
    """One request, validated against the document's operation for ``template``."""
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    kwargs: dict[str, Any] = {"path_parameters": path_parameters} if path_parameters else {}
    if body is not None:
        kwargs.update(body=body, media_type="application/json")
    case = schema[template or path][method].Case(**kwargs)
    response = case.call()
    case.validate_response(response, checks=CHECKS)
    return response


def infer(app: Flask, body: Any, name: str = "iris"):
    return call(app, "POST", "", "/v2/models/{name}/infer", body, name=name)


def tensor(rows: list[list[float]], flat: bool = True, datatype: str = "FP64") -> dict:
    data = [v for row in rows for v in row] if flat else rows
    return {"inputs": [{"name": "input-0", "shape": [len(rows), len(rows[0])], "datatype": datatype, "data": data}]}


def test_server_metadata_health_and_model_readiness(app: Flask) -> None:
    assert call(app, "GET", "/v2").json()["name"] == "tpotserve"
    assert call(app, "GET", "/v2/health/live").json() == {"live": True}
    assert call(app, "GET", "/v2/health/ready").json() == {"ready": True}
    ready = call(app, "GET", "", "/v2/models/{name}/ready", name="iris")
    assert ready.json() == {"name": "iris", "ready": True}


def test_model_metadata_lists_the_features_and_both_outputs(app: Flask) -> None:
    meta = call(app, "GET", "", "/v2/models/{name}", name="iris").json()
    assert meta["versions"] == ["v1"] and meta["platform"] == "sklearn"
    assert [i["name"] for i in meta["inputs"]] == FEATURES
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert outputs["predict"]["datatype"] == "BYTES"
    assert outputs["predict_proba"]["shape"] == [-1, 3]
    assert outputs["predict_proba"]["parameters"]["classes"] == "setosa,versicolor,virginica"
    by_version = call(app, "GET", "", "/v2/models/{name}/versions/{version}", name="iris", version="v1").json()
    assert by_version == meta


@pytest.mark.parametrize("flat", [True, False], ids=["flat", "nested"])
@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_a_tensor_gets_what_predict_answers(app: Flask, flat: bool, datatype: str) -> None:
    answer = infer(app, {**tensor(ROWS, flat, datatype), "id": "req-1"}).json()
    assert answer["model_name"] == "iris" and answer["model_version"] == "v1" and answer["id"] == "req-1"
    outputs = {o["name"]: o for o in answer["outputs"]}
    batch = app.test_client().post("/predict", json={"instances": [dict(zip(FEATURES, r)) for r in ROWS]}).get_json()
    assert outputs["predict"] == {"name": "predict", "datatype": "BYTES", "shape": [3], "data": batch["predictions"]}
    proba = np.asarray(outputs["predict_proba"]["data"]).reshape(outputs["predict_proba"]["shape"])
    expected = [[p[c] for c in ("setosa", "versicolor", "virginica")] for p in batch["probabilities"]]
    assert proba.tolist() == expected


def test_one_input_per_column_in_any_order(app: Flask) -> None:
    columns = [
        {"name": name, "shape": [len(ROWS), 1] if i % 2 else [len(ROWS)], "datatype": "FP64",
         "data": [row[i] for row in ROWS]}
        for i, name in enumerate(FEATURES)
    ]
    body = {"parameters": {"content_type": "pd"}, "inputs": columns[::-1], "outputs": [{"name": "predict"}]}
    answer = infer(app, body).json()
    assert [o["name"] for o in answer["outputs"]] == ["predict"]
    assert answer["outputs"][0]["data"] == infer(app, tensor(ROWS)).json()["outputs"][0]["data"]


def test_the_book_row_through_v2(app: Flask) -> None:
    answer = infer(app, tensor([list(BOOK.values())])).json()
    book = app.test_client().post("/predict", json=BOOK).get_json()
    assert answer["outputs"][0]["data"] == [book["Prediction"]]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ([1, 2], "JSON object"),
        ({"inputs": []}, "'inputs'"),
        ({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]}, "[rows, 4]"),
        ({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "INT8", "data": [1, 2, 3, 4]}]}, "FP32 or FP64"),
        ({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}, "needs 8"),
        ({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, "a"]}]}, "numbers only"),
        ({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, True]}]}, "numbers only"),
        ({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 1e39]}]}, "float32"),
        ({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 10**400]}]}, "float32"),
        ({"inputs": [{"name": "x", "shape": [0, 4], "datatype": "FP64", "data": []}]}, "no rows"),
        ({**tensor(ROWS), "outputs": [{"name": "logits"}]}, "unknown output"),
        ({"parameters": {"content_type": "pd"}, "inputs": [{"name": "SepalLength", "shape": [1], "datatype": "FP64",
                                                             "data": [5.1]}]}, "missing input"),
        ({"inputs": [{"name": "SepalLength", "shape": [1], "datatype": "FP64", "data": [5.1]},
                     {"name": "Petals", "shape": [1], "datatype": "FP64", "data": [1.0]}]}, "unknown input"),
    ],
)
def test_a_bad_request_is_a_400_that_says_why(app: Flask, body: Any, says: str) -> None:
    response = app.test_client().post("/v2/models/iris/infer", json=body)
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.get_json()
    assert set(error) == {"error"} and says in error["error"], error


def test_too_many_rows_is_a_400(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    app.extensions["tpotserve"].settings = app.extensions["tpotserve"].settings.model_copy(update={"max_batch_rows": 2})
    response = app.test_client().post("/v2/models/iris/infer", json=tensor(ROWS))
    assert response.status_code == 400 and "the limit is 2" in response.get_json()["error"]


def test_unknown_model_or_version_and_not_json_in_the_protocols_shape(app: Flask) -> None:
    client = app.test_client()
    for path in ("/v2/models/wine/infer", "/v2/models/iris/versions/v0/infer"):
        response = client.post(path, json=tensor(ROWS))
        assert response.status_code == 404 and set(response.get_json()) == {"error"}
    assert client.get("/v2/models/iris/versions/v0").status_code == 404
    not_json = client.post("/v2/models/iris/infer", data="x", content_type="text/plain")
    assert not_json.status_code == 400 and set(not_json.get_json()) == {"error"}
    wrong_method = client.get("/v2/models/iris/infer")
    assert wrong_method.status_code == 405 and set(wrong_method.get_json()) == {"error"}


def test_a_regressor_answers_predict_only(tmp_path: Path) -> None:
    app = make_app(tmp_path, LinearRegression(), task="regression")
    meta = app.test_client().get("/v2/models/iris").get_json()
    assert [o["name"] for o in meta["outputs"]] == ["predict"]
    answer = infer(app, tensor(ROWS)).json()
    assert [o["name"] for o in answer["outputs"]] == ["predict"]
    assert answer["outputs"][0]["datatype"] == "FP64" and len(answer["outputs"][0]["data"]) == 3
    asked = app.test_client().post("/v2/models/iris/infer", json={**tensor(ROWS), "outputs": [{"name": "predict_proba"}]})
    assert asked.status_code == 400 and "no predict_proba" in asked.get_json()["error"]
