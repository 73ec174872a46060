"""The Open Inference Protocol (V2) through nginx, spoken by a standard client
(Triton's ``tritonclient.http``), against the session's stack and its bootstrap model."""

from __future__ import annotations

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from .conftest import BOOK_REQUEST, LiveStack

FEATURES = ["SepalLength", "SepalWidth", "PetalLength", "PetalWidth"]
ROWS = [[5.0, 3.4, 1.5, 0.2], [5.9, 2.8, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3]]


@pytest.fixture
def client(stack: LiveStack) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=stack.url.removeprefix("http://"))


def _tensor(rows: list[list[float]], datatype: str) -> triton.InferInput:
    tensor = triton.InferInput("input-0", [len(rows), len(rows[0])], datatype)
    tensor.set_data_from_numpy(np.asarray(rows, dtype=np.float32 if datatype == "FP32" else np.float64),
                               binary_data=False)
    return tensor


def _labels(result: triton.InferResult) -> list:
    """``predict`` as Python values (JSON BYTES data comes back as str, binary as bytes)."""
    return [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("predict").tolist()]


def _outputs() -> list[triton.InferRequestedOutput]:
    return [triton.InferRequestedOutput(name, binary_data=False) for name in ("predict", "predict_proba")]


def test_health_and_metadata_with_a_v2_client(client: triton.InferenceServerClient, stack: LiveStack) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["name"] == "tpotserve"
    served = stack.get("/readyz").json()["model_version"]
    assert client.is_model_ready("iris") and client.is_model_ready("iris", served)
    meta = client.get_model_metadata("iris")
    assert meta["versions"] == [served]
    assert [i["name"] for i in meta["inputs"]] == FEATURES
    assert {o["name"] for o in meta["outputs"]} == {"predict", "predict_proba"}


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_infer_answers_what_predict_answers(client: triton.InferenceServerClient, stack: LiveStack,
                                            datatype: str) -> None:
    result = client.infer("iris", [_tensor(ROWS, datatype)], outputs=_outputs(), request_id="r-1")
    answer = result.get_response()
    assert answer["model_name"] == "iris" and answer["id"] == "r-1"
    predict = _labels(result)
    batch = stack.post("/predict", json={"instances": [dict(zip(FEATURES, row)) for row in ROWS]}).json()
    assert predict == batch["predictions"]
    assert answer["model_version"] == batch["model_version"]
    proba = result.as_numpy("predict_proba")
    assert proba.shape == (3, len(batch["probabilities"][0]))
    assert np.allclose(proba.sum(axis=1), 1.0)


def test_the_books_row_and_a_version_through_v2(client: triton.InferenceServerClient, stack: LiveStack) -> None:
    row = [[BOOK_REQUEST[name] for name in FEATURES]]
    book = stack.post("/predict", json=BOOK_REQUEST).json()
    result = client.infer("iris", [_tensor(row, "FP64")], model_version=book["model_version"], outputs=_outputs()[:1])
    assert _labels(result) == [book["Prediction"]]


def test_errors_reach_the_client_as_the_protocol_says(client: triton.InferenceServerClient, stack: LiveStack) -> None:
    with pytest.raises(InferenceServerException, match="no model named 'wine'"):
        client.infer("wine", [_tensor(ROWS, "FP64")], outputs=_outputs())
    binary = triton.InferInput("input-0", [1, 4], "FP64")
    binary.set_data_from_numpy(np.asarray([ROWS[0]]), binary_data=True)
    with pytest.raises(InferenceServerException, match="binary tensor data"):
        client.infer("iris", [binary], outputs=_outputs())
    wrong = requests.post(f"{stack.url}/v2/models/iris/infer", timeout=10,
                          json={"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]})
    assert wrong.status_code == 400 and set(wrong.json()) == {"error"}
