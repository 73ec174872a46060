"""Predictions through nginx: the book's client, batches, the cold start, bad input."""

from __future__ import annotations

import json

import pytest
import requests

from .conftest import BOOK_REQUEST, LiveStack

BOOK_KEYS = {"In_SepalLength", "In_SepalWidth", "In_PetalLength", "In_PetalWidth", "Prediction", "Probability"}
SPECIES = {"setosa", "versicolor", "virginica"}


def test_cold_start_answers_503_json_with_retry_after(stack: LiveStack) -> None:
    cold = stack.cold_predict
    assert cold.status_code == 503
    assert cold.headers["Content-Type"].startswith("application/json")
    assert int(cold.headers["Retry-After"]) > 0
    assert cold.json()["error"]["code"] == "model_not_ready"
    assert stack.cold_readyz.status_code == 503
    assert stack.cold_readyz.json()["model_loaded"] is False


def test_bootstrap_model_is_an_iris_model_trained_by_the_worker(stack: LiveStack) -> None:
    versions = {meta["version"]: meta for meta in stack.get("/models").json()["versions"]}
    current = versions[stack.bootstrap_version]
    assert current["dataset"] == "iris"
    assert current["reason"] == "bootstrap"
    assert [f["name"] for f in current["features"]] == list(BOOK_REQUEST)
    assert set(current["classes"]) == SPECIES
    assert 0.0 <= current["cv_score"] <= 1.0
    assert current["library_versions"]["tpot"].startswith("1.")


def test_book_client_request_gets_book_keys(stack: LiveStack) -> None:
    # Exactly what the book's client does: requests.post(json=...), json.loads(content).
    response = requests.post(stack.url + "/predict", json=BOOK_REQUEST, timeout=10)
    answer = json.loads(response.content)
    assert response.status_code == 200
    assert BOOK_KEYS <= set(answer)
    for name, value in BOOK_REQUEST.items():
        assert answer[f"In_{name}"] == value
    assert answer["Prediction"] in SPECIES
    assert 0.0 <= answer["Probability"] <= 1.0
    assert answer["Probability"] == pytest.approx(max(answer["probabilities"].values()))
    assert answer["model_version"] == response.headers["X-Model-Version"]


def test_batch_predict(stack: LiveStack) -> None:
    rows = [
        {"SepalLength": 5.1, "SepalWidth": 3.5, "PetalLength": 1.4, "PetalWidth": 0.2},
        {"SepalLength": 6.7, "SepalWidth": 3.0, "PetalLength": 5.2, "PetalWidth": 2.3},
        {"PetalWidth": 1.3, "PetalLength": 4.0, "SepalWidth": 2.8, "SepalLength": 6.1},  # any key order
    ]
    response = stack.post("/predict", json={"instances": rows})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["predictions"]) == 3
    assert set(body["predictions"]) <= SPECIES
    assert len(body["probabilities"]) == 3
    for probabilities in body["probabilities"]:
        assert set(probabilities) == SPECIES
        assert sum(probabilities.values()) == pytest.approx(1.0)
    assert body["model_version"] == response.headers["X-Model-Version"]


def _raw(stack: LiveStack, body: bytes, content_type: str = "application/json") -> requests.Response:
    return stack.post("/predict", data=body, headers={"Content-Type": content_type})


BAD_INPUTS = [
    ("malformed", b'{"SepalLength": 5.1,', "application/json", 400, "malformed_body", None),
    ("empty", b"", "application/json", 400, "malformed_body", None),
    ("deep nesting", b"[" * 50_000 + b"]" * 50_000, "application/json", 400, "malformed_body", None),
    ("form body", b"SepalLength=5.1", "application/x-www-form-urlencoded", 415, "unsupported_media_type", None),
    ("top-level scalar", b"42", "application/json", 422, "invalid_input", None),
    (
        "missing feature",
        b'{"SepalLength": 5.1, "SepalWidth": 3.5, "PetalLength": 0.2}',
        "application/json", 422, "invalid_input", "PetalWidth",
    ),
    (
        "unknown feature",
        b'{"SepalLength": 5.1, "SepalWidth": 3.5, "PetalLength": 0.2, "PetalWidth": 3.4, "Colour": 1}',
        "application/json", 422, "invalid_input", "Colour",
    ),
    (
        "wrong type",
        b'{"SepalLength": "5.1", "SepalWidth": 3.5, "PetalLength": 0.2, "PetalWidth": 3.4}',
        "application/json", 422, "invalid_input", "SepalLength",
    ),
    (
        "NaN",
        b'{"SepalLength": NaN, "SepalWidth": 3.5, "PetalLength": 0.2, "PetalWidth": 3.4}',
        "application/json", 422, "invalid_input", None,
    ),
    (
        "overflow to infinity",
        b'{"SepalLength": 1e999, "SepalWidth": 3.5, "PetalLength": 0.2, "PetalWidth": 3.4}',
        "application/json", 422, "invalid_input", "SepalLength",
    ),
    (
        "bad row in batch",
        b'{"instances": [{"SepalLength": 5.1, "SepalWidth": 3.5, "PetalLength": 0.2, "PetalWidth": null}]}',
        "application/json", 422, "invalid_input", "instances[0].PetalWidth",
    ),
]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code", "field"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_gets_json_4xx_naming_the_field(
    stack: LiveStack, body: bytes, content_type: str, status: int, code: str, field: str | None
) -> None:
    response = _raw(stack, body, content_type)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert error["field"] == field


def test_oversized_body_is_a_json_413_from_the_gateway(stack: LiveStack) -> None:
    response = _raw(stack, b'{"instances": [' + b" " * (9 * 1024 * 1024) + b"]}")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/no-such-thing", 404, "not_found"),
        ("GET", "/predict", 405, "method_not_allowed"),
        ("DELETE", "/models", 405, "method_not_allowed"),
    ],
)
def test_routing_errors_are_json(stack: LiveStack, method: str, path: str, status: int, code: str) -> None:
    response = stack.session.request(method, stack.url + path, timeout=10)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_health_endpoints(stack: LiveStack) -> None:
    assert stack.get("/healthz").json() == {"status": "ok"}
    ready = stack.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["model_loaded"] is True
    assert body["queue"] == "ok"
    assert body["model_version"]


def test_request_id_is_generated_or_passed_through(stack: LiveStack) -> None:
    generated = stack.get("/healthz").headers["X-Request-ID"]
    assert len(generated) >= 16
    passed = stack.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"]
    assert passed == "abc-123"
