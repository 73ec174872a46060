"""The OpenAPI document (services/api/tpotserve_api/openapi.json) is the API's contract:
every route the Flask app has is in it with each of its methods, it names no route the
app does not have, it is a valid OpenAPI 3 document, and /openapi.json serves it verbatim.
The app's /predict answers on fixed models are checked against it with Schemathesis's checks
(over WSGI), including the extreme inputs whose answer depends on the model.

The live stack is fuzzed against it by tests/integration/test_contract.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import joblib
import pytest
import schemathesis
from flask import Flask
from openapi_spec_validator import validate
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from tpotserve.model_meta import ModelMeta
from tpotserve.settings import load_settings
from tpotserve.store import ModelStore
from tpotserve_api import resources
from tpotserve_api.app import create_app

from tests.contract_checks import CHECKS

KEY = "test-key"
SIGNING_KEY = "test-signing-key"
DEAD_REDIS = "redis://127.0.0.1:1/0"
FEATURES = ["SepalLength", "SepalWidth", "PetalLength", "PetalWidth"]
BOOK = {"SepalLength": 5.1, "SepalWidth": 3.5, "PetalLength": 1.4, "PetalWidth": 0.2}
DOCUMENT = Path(resources.__file__).with_name("openapi.json")
IGNORED_METHODS = {"HEAD", "OPTIONS"}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
CONVERTER = re.compile(r"<(?:[a-z_]+(?:\([^)]*\))?:)?([A-Za-z_][A-Za-z0-9_]*)>")


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return json.loads(DOCUMENT.read_text())


def make_app(tmp_path: Path, estimator: Any = None, task: str = "classification") -> Flask:
    """The real app over a store with one signed model, as tests/unit/test_api.py builds it."""
    bunch = load_iris()
    if task == "classification":
        y = [str(bunch.target_names[i]) for i in bunch.target]
    else:
        y = bunch.target.astype(float)
    model = (estimator if estimator is not None else LogisticRegression(max_iter=1000)).fit(bunch.data, y)
    store = ModelStore(tmp_path / "models" / "models" / "iris", SIGNING_KEY.encode())  # the default model's store
    meta = ModelMeta(
        task=task,
        dataset="iris",
        target="species",
        features=[
            {"name": n, "type": "number", "min": float(bunch.data[:, i].min()), "max": float(bunch.data[:, i].max())}
            for i, n in enumerate(FEATURES)
        ],
        classes=[str(c) for c in model.classes_] if task == "classification" else None,
    ).to_json()
    store.write_version("v1", lambda path: joblib.dump(model, path), meta)
    store.set_current("v1")
    settings = load_settings(
        model_dir=store.root.parents[1],
        dataset_dir=tmp_path / "datasets",
        api_key=KEY,
        model_signing_key=SIGNING_KEY,
        redis_url=DEAD_REDIS,
        redis_timeout_s=0.2,
    )
    return create_app(settings, poll=False)


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    return make_app(tmp_path)


def app_routes(app: Flask) -> dict[str, set[str]]:
    """{OpenAPI-style path: methods} of every rule but Flask's static files."""
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = CONVERTER.sub(r"{\1}", rule.rule)
        routes.setdefault(path, set()).update(m.upper() for m in (rule.methods or ()) if m not in IGNORED_METHODS)
    return routes


def documented_routes(document: dict[str, Any]) -> dict[str, set[str]]:
    return {
        path: {method.upper() for method in item if method in HTTP_METHODS}
        for path, item in document["paths"].items()
    }


def test_converter_pattern() -> None:
    assert CONVERTER.sub(r"{\1}", "/jobs/<string:job_id>") == "/jobs/{job_id}"
    assert CONVERTER.sub(r"{\1}", "/a/<int(min=1):n>/<x>") == "/a/{n}/{x}"


def test_every_route_of_the_app_is_documented_with_each_method(app: Flask, document: dict[str, Any]) -> None:
    routes = app_routes(app)
    documented = documented_routes(document)
    assert routes, "the app has no routes?"
    missing = {
        path: sorted(methods - documented.get(path, set()))
        for path, methods in routes.items()
        if methods - documented.get(path, set())
    }
    assert not missing, f"routes of the app missing from openapi.json: {missing}"


def test_every_documented_route_exists_in_the_app(app: Flask, document: dict[str, Any]) -> None:
    routes = app_routes(app)
    documented = documented_routes(document)
    extra = {
        path: sorted(methods - routes.get(path, set()))
        for path, methods in documented.items()
        if methods - routes.get(path, set())
    }
    assert not extra, f"openapi.json documents routes the app does not have: {extra}"


def test_path_parameters_match_the_templates(document: dict[str, Any]) -> None:
    for path, item in document["paths"].items():
        names = set(re.findall(r"{([^}]+)}", path))
        declared = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            here = declared | {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert here == names, (path, method, here)


def test_the_document_is_valid_openapi_3(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.0.")
    validate(document)  # raises on any violation of the OpenAPI 3.0 schema or a dangling $ref


def test_every_operation_documents_its_errors(document: dict[str, Any]) -> None:
    """Admin operations document 401 and 503; operations with a body 413 (and 415 for JSON ones)."""
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            statuses = set(operation["responses"])
            assert any(s.startswith("2") for s in statuses), (path, method)
            assert "503" in statuses, (path, method)  # nginx: upstream_unavailable
            if {"adminBearer": []} in operation.get("security", []):
                assert {"401", "503"} <= statuses, (path, method)
            body = operation.get("requestBody")
            if body and path.startswith("/v2/"):
                assert {"400", "413"} <= statuses, (path, method)  # the protocol's 400 for 415 and 422 too
            elif body:
                assert {"413", "415", "422"} <= statuses, (path, method)
                if "application/json" in body["content"]:
                    assert "400" in statuses, (path, method)
            if "{" in path:
                assert "404" in statuses, (path, method)
    assert {"429"} <= set(document["paths"]["/predict"]["post"]["responses"])
    assert {"429"} <= set(document["paths"]["/retrain"]["post"]["responses"])


def test_openapi_json_serves_the_document(app: Flask, document: dict[str, Any]) -> None:
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == document


# --- the app's answers against the document, on fixed models ---------------------------


def _strict_json(text: str) -> Any:
    """JSON as RFC 8259 has it: NaN and Infinity are not JSON."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _predict(app: Flask, body: Any) -> Any:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    case = schema["/predict"]["POST"].Case(body=body, media_type="application/json")
    response = case.call()
    case.validate_response(response, checks=CHECKS)
    _strict_json(response.text)
    return response


@pytest.mark.parametrize(
    "body",
    [BOOK, {"instances": [BOOK, BOOK]}, {**BOOK, "PetalWidth": 1e6}, {**BOOK, "PetalWidth": 10**400}, {"x": 1}],
    ids=["book", "batch", "far-outside", "beyond-float", "unknown-feature"],
)
@pytest.mark.parametrize("estimator", [LogisticRegression(max_iter=1000), RandomForestClassifier(n_estimators=5, random_state=0)], ids=["logistic", "forest"])
def test_predict_answers_as_documented(tmp_path: Path, estimator: Any, body: dict) -> None:
    response = _predict(make_app(tmp_path, estimator), body)
    assert response.status_code in (200, 422)


EXTREME = 1.7976931348623157e308  # the largest finite double: a valid JSON number


# Found by the contract fuzz (fixed since): a forest casts X to float32, so |value| > 3.4e38
# was a 500; on a linear model 1.8e308 overflowed predict_proba into NaN, answered as
# "Probability": null (or NaN tokens, not JSON). Either must be a 200 with numbers, or a 422.
def test_predict_beyond_float32_on_a_forest_is_not_a_server_error(tmp_path: Path) -> None:
    app = make_app(tmp_path, RandomForestClassifier(n_estimators=5, random_state=0))
    response = _predict(app, {name: 1e39 for name in FEATURES})
    assert response.status_code in (200, 422)


def test_predict_extreme_values_on_a_linear_model_answer_numbers(tmp_path: Path) -> None:
    app = make_app(tmp_path, LogisticRegression(max_iter=1000))
    response = _predict(app, {name: EXTREME for name in FEATURES})
    assert response.status_code in (200, 422)
