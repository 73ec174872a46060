"""A model's contract (tpotserve.contract) and the API's refusals: the diff logic on plain
contracts, then the real app over a real store (tests/unit/test_api.py's fixtures): a retrain
or activation that would change the served contract is a 409 before anything is enqueued;
the override and the allowed cases reach the (dead) queue, a 503."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from tpotserve.contract import Contract, diff, guard, history
from tpotserve.datasets import iris_frame
from tpotserve.errors import ContractConflict, InvalidInput
from tpotserve.registry import ModelRegistry
from tpotserve.schema import parse_activate_request
from tpotserve_trainer import contract_guard

from tests.unit.payloads import training_payload

from tests.unit.test_api import AUTH, make_meta, publish, upload  # noqa: F401 - fixtures below come from there too
from tests.unit.test_api import client, iris, make_client, model, store, v1  # noqa: F401

IRIS = Contract.build([(n, "number") for n in ("a", "b")], "species", "classification", ["x", "y"])


def test_the_same_contract_is_no_change() -> None:
    change = diff(IRIS, IRIS)
    assert change.empty and not change.breaking and change.message() == "no change"


def test_added_classes_are_allowed_removed_ones_are_not() -> None:
    grown = Contract.build(IRIS.features, "species", "classification", ["x", "y", "z"])
    assert diff(IRIS, grown).classes_added == ("z",) and not diff(IRIS, grown).breaking
    shrunk = diff(grown, IRIS)
    assert shrunk.classes_removed == ("z",) and shrunk.breaking and not shrunk.reshaped
    assert "classes removed: z" in shrunk.message()


def test_features_target_and_task_changes_are_named() -> None:
    other = Contract.build([("b", "text"), ("c", "number")], "price", "regression", None)
    change = diff(IRIS, other)
    assert change.features_added == ("c",) and change.features_missing == ("a",)
    assert change.features_retyped == (("b", "number", "text"),)
    assert change.target == ("species", "price") and change.task == ("classification", "regression")
    assert change.breaking
    assert change.message() == ("features added: c; features missing: a; features retyped: b number -> text; "
                                "target species -> price; task classification -> regression")
    body = change.to_json()
    assert body["task"] == {"from": "classification", "to": "regression"} and body["classes_removed"] == []


def test_a_reorder_is_a_change_for_tensor_clients() -> None:
    swapped = Contract.build([("b", "number"), ("a", "number")], "species", "classification", ["x", "y"])
    assert diff(IRIS, swapped).features_reordered and diff(IRIS, swapped).breaking


def test_class_labels_compare_as_the_answer_keys() -> None:
    numbers = Contract.build(IRIS.features, "species", "classification", [1, 2])
    strings = Contract.build(IRIS.features, "species", "classification", ["1", "2"])
    assert diff(numbers, strings).empty


def test_guard_refuses_with_the_difference_unless_replaced() -> None:
    served = {**IRIS.to_json(), "version": "v1"}
    other = Contract.build([("c", "number")], "price", "regression", None)
    with pytest.raises(ContractConflict) as refused:
        guard(served, other, model="iris", action="this training", replace=False)
    assert refused.value.code == "contract_changed"
    assert refused.value.details["contract_change"]["features_added"] == ["c"]
    assert refused.value.details["current_version"] == "v1"
    assert "replace_contract" in refused.value.message
    assert guard(served, other, model="iris", action="this training", replace=True).breaking
    assert guard(None, other, model="iris", action="this training", replace=False) is None  # nothing served


def test_history_names_the_versions_of_another_contract() -> None:
    grown = {**Contract.build(IRIS.features, "species", "classification", ["x", "y", "z"]).to_json(), "version": "v2"}
    other = {**Contract.build([("c", "number")], "price", "regression", None).to_json(), "version": "v3"}
    metas = [{**IRIS.to_json(), "version": "v1"}, grown, other]
    assert history(metas, "v1").other_versions == ["v3"]  # a class added is one model's history
    assert history(metas, "v3").other_versions == ["v1", "v2"] and history(metas, "v3").mixed
    assert not history(metas[:2], "v2").mixed
    assert history([], None).to_json() == {"contract": None, "mixed_contracts": False, "other_contract_versions": []}


def test_the_activate_body_and_query() -> None:
    assert parse_activate_request(None).replace_contract is False
    assert parse_activate_request({"replace_contract": True}).replace_contract is True
    assert parse_activate_request(None, "true").replace_contract is True
    for body, query in (({"replace_contract": "yes"}, None), ({"other": 1}, None), ([], None), (None, "maybe")):
        with pytest.raises(InvalidInput):
            parse_activate_request(body, query)


# --- the API -------------------------------------------------------------------------------
def _contract_error(resp) -> dict:
    assert resp.status_code == 409, resp.get_data(as_text=True)
    error = resp.get_json()["error"]
    assert error["code"] == "contract_changed"
    assert {"contract_change", "current_version", "current_contract", "new_contract"} <= set(error)
    return error


def test_retrain_of_the_default_model_on_another_data_set_is_409(client) -> None:
    dataset_id = upload(client).get_json()["id"]
    error = _contract_error(client.post("/retrain", json={"dataset": dataset_id, "target": "label"}, headers=AUTH))
    assert error["contract_change"]["features_added"] == ["width", "height"]
    assert error["contract_change"]["target"] == {"from": "species", "to": "label"}
    assert error["current_version"] == "v1"
    # The override, and a new model name, go on to the (dead) queue.
    for body in ({"replace_contract": True}, {"model": "pets"}):
        resp = client.post("/retrain", json={"dataset": dataset_id, "target": "label", **body}, headers=AUTH)
        assert resp.status_code == 503 and resp.get_json()["error"]["code"] == "queue_unavailable"
    # The model's own data set (no "dataset"): the same contract.
    assert client.post("/retrain", json={}, headers=AUTH).status_code == 503


def test_activation_across_contracts_is_409_unless_replaced(store, model, iris, client) -> None:
    X, _ = iris
    regressor = LinearRegression().fit(X[:, :2], X[:, 3])
    publish(store, "v2", regressor, make_meta(regressor, X[:, :2], names=["width", "height"], task="regression",
                                              target="size"), activate=False)
    for path in ("/models/v2/activate", "/models/iris/versions/v2/activate"):
        error = _contract_error(client.post(path, headers=AUTH))
        assert error["contract_change"]["task"] == {"from": "classification", "to": "regression"}
    for kwargs in ({"json": {"replace_contract": True}}, {"query_string": {"replace_contract": "true"}}):
        resp = client.post("/models/v2/activate", headers=AUTH, **kwargs)
        assert resp.status_code == 503, resp.get_data(as_text=True)  # past the check, at the queue
    assert client.post("/models/v2/activate", json={"replace_contract": "yes"}, headers=AUTH).status_code == 422
    # The served version itself: no change, on to the queue.
    assert client.post("/models/v1/activate", headers=AUTH).status_code == 503


def test_registry_and_model_endpoints_show_the_contract_and_a_mixed_history(store, model, iris, client) -> None:
    X, _ = iris
    regressor = LinearRegression().fit(X[:, :2], X[:, 3])
    publish(store, "v2", regressor, make_meta(regressor, X[:, :2], names=["width", "height"], task="regression",
                                              target="size"), activate=False)
    entry = client.get("/registry").get_json()["models"][0]
    assert entry["contract"]["target"] == "species" and len(entry["contract"]["features"]) == 4
    assert entry["contract"]["classes"] == ["setosa", "versicolor", "virginica"]
    assert entry["mixed_contracts"] is True and entry["other_contract_versions"] == ["v2"]
    for path in ("/models/current", "/models/iris"):
        body = client.get(path).get_json()
        assert body["contract"]["task"] == "classification" and body["other_contract_versions"] == ["v2"]
    listing = client.get("/models").get_json()
    assert listing["mixed_contracts"] is True
    assert {v["version"]: v["other_contract"] for v in listing["versions"]} == {"v1": False, "v2": True}
    assert np.isfinite(listing["versions"][0]["cv_score"])


# --- the trainer's checks (tpotserve_trainer.contract_guard) -------------------------------
def test_the_trainer_refuses_a_change_and_reports_added_classes(store, v1) -> None:
    frame = iris_frame()
    X, y = frame.drop(columns=["species"]), frame["species"]
    same = contract_guard.check_training(store, training_payload(), X, y, "iris")
    assert same["classes_added"] == [] and same["replaced"] is False and same["change"] is None

    grown_y = y.where(y != "virginica", "hybrida")
    grown_y.iloc[:3] = "virginica"
    grown = contract_guard.check_training(store, training_payload(), X, grown_y, "iris")
    assert grown["classes_added"] == ["hybrida"] and grown["replaced"] is False

    other = training_payload(target="PetalWidth", task="regression", scoring="r2")
    features, target = frame.drop(columns=["species", "PetalWidth"]), frame["PetalWidth"]
    with pytest.raises(ContractConflict) as refused:
        contract_guard.check_training(store, other, features, target, "iris")
    assert refused.value.details["contract_change"]["features_missing"] == ["PetalWidth"]
    replaced = contract_guard.check_training(store, training_payload(target="PetalWidth", task="regression",
                                                                     scoring="r2", replace_contract=True),
                                             features, target, "iris")
    assert replaced["replaced"] is True


def test_the_control_worker_refuses_an_activation_across_contracts(store, model, iris, v1) -> None:
    X, _ = iris
    regressor = LinearRegression().fit(X[:, :2], X[:, 3])
    publish(store, "v2", regressor, make_meta(regressor, X[:, :2], names=["width", "height"], task="regression",
                                              target="size"), activate=False)
    with store.publishing():
        with pytest.raises(ContractConflict):
            contract_guard.check_activation(store, "v2", "iris", replace=False)
        contract_guard.check_activation(store, "v2", "iris", replace=True)
        contract_guard.check_activation(store, "v1", "iris", replace=False)  # the served one


def test_a_mixed_history_splits_by_moving_version_directories(store, model, iris, v1) -> None:
    """docs/models.md's split: move the versions of the other contract into a model of their own."""
    X, _ = iris
    regressor = LinearRegression().fit(X[:, :2], X[:, 3])
    publish(store, "v2", regressor, make_meta(regressor, X[:, :2], names=["width", "height"], task="regression",
                                              target="size"), activate=False)
    assert history(store.list_versions(), "v1").mixed
    registry = ModelRegistry(store.root.parents[1], store.signing_key, "iris")
    split = registry.store("sizes")
    split.versions_dir.mkdir(parents=True)
    (store.versions_dir / "v2").rename(split.versions_dir / "v2")
    assert not history(store.list_versions(), "v1").mixed
    assert registry.names() == ["iris", "sizes"]
    assert split.set_current("v2").version == "v2"  # hash and signature still verify
    assert history(split.list_versions(), "v2").contract.target == "size"
