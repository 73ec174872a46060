"""The CLI's client against a real local HTTP server, and the CLI's pure functions.

The server (http.server in a thread) plays the gateway with canned answers, so
these tests pin the wire format the client sends, the error mapping, the
exit codes and the CSV/JSON handling without the real stack.
"""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tpotserve_cli import Client, TpotServeAPIError, TpotServeConnectionError
from tpotserve_cli.main import main
from tpotserve_cli.rows import (UsageError, detect_format, format_csv, parse_csv_rows, parse_feedback, parse_json_rows,
                                parse_rows, result_rows)
from tpotserve_cli.tables import (
    DRIFT_COLUMNS,
    LEADERBOARD_COLUMNS,
    MODEL_COLUMNS,
    REGISTRY_COLUMNS,
    drift_table,
    leaderboard_table,
    models_table,
    quality_table,
    registry_table,
)

ROW = {"SepalLength": 5.1, "SepalWidth": 3.5, "PetalLength": 1.4, "PetalWidth": 0.2}
PREDICTED = {
    "predictions": ["setosa"],
    "probabilities": [{"setosa": 0.98, "versicolor": 0.02, "virginica": 0.0}],
    "model_version": "v1",
}
REGISTRY = {
    "default": "iris",
    "max_loaded_models": 16,
    "models": [
        {"name": "iris", "default": True, "current_version": "v1", "versions": 2, "task": "classification",
         "dataset": "iris", "target": "species", "scoring": "accuracy", "holdout_score": 0.96667,
         "created_at": "2026-01-01T00:00:00Z", "loaded": True,
         "contract": {"features": [{"name": n, "type": "number"} for n in "abcd"], "target": "species",
                      "task": "classification", "classes": ["x", "y", "z"]},
         "mixed_contracts": True, "other_contract_versions": ["v0"]},
        {"name": "housing", "default": False, "current_version": None, "versions": 0, "task": None,
         "dataset": None, "target": None, "scoring": None, "holdout_score": None, "created_at": None,
         "loaded": False},
    ],
}


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeGateway:
    """Answers (method, path) from a script: a list of (status, body) used in turn, the last one repeating."""

    url: str
    script: dict[tuple[str, str], list[tuple[int, Any]]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    headers: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)

    def answer(self, method: str, path: str, *answers: tuple[int, Any], headers: dict[str, str] | None = None,
               ) -> None:
        self.script[(method, path)] = list(answers)
        self.headers[(method, path)] = dict(headers or {})

    def json_sent(self, index: int = -1) -> Any:
        return json.loads(self.seen[index].body)


@pytest.fixture
def gateway() -> Iterator[FakeGateway]:
    state = FakeGateway(url="")

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            state.seen.append(Seen(self.command, self.path, dict(self.headers), body))
            answers = state.script.get((self.command, self.path)) or [
                (404, {"error": {"code": "not_found", "message": f"no route {self.path}", "field": None}})
            ]
            status, payload = answers.pop(0) if len(answers) > 1 else answers[0]
            raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            extra = dict(state.headers.get((self.command, self.path)) or {})
            kind = extra.pop("Content-Type", "text/html" if isinstance(payload, bytes) else "application/json")
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(raw)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, *args: Any) -> None:  # keep pytest's output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _error(code: str, message: str, field: str | None = None, **details: Any) -> dict:
    return {"error": {"code": code, "message": message, "field": field, **details}}


# --- the client on the wire ---------------------------------------------------------
def test_predict_sends_instances_and_the_bearer_key(gateway: FakeGateway) -> None:
    gateway.answer("POST", "/predict", (200, PREDICTED))
    answer = Client(gateway.url + "/", api_key="k").predict([ROW])
    assert answer == PREDICTED
    assert gateway.json_sent() == {"instances": [ROW]}
    assert gateway.seen[-1].headers["Authorization"] == "Bearer k"
    Client(gateway.url).predict(ROW)  # one mapping is a batch of one; no key, no header
    assert gateway.json_sent() == {"instances": [ROW]}
    assert "Authorization" not in gateway.seen[-1].headers


def test_retrain_sends_only_the_values_given(gateway: FakeGateway) -> None:
    gateway.answer("POST", "/retrain", (202, {"job_id": "j1", "status": "queued"}))
    Client(gateway.url, "k").retrain(max_time_mins=0.25, cv=3, promote="never")
    # No dataset: the server retrains on the model's current data set (an old server: iris).
    assert gateway.json_sent() == {"max_time_mins": 0.25, "cv": 3, "promote": "never"}
    Client(gateway.url, "k").retrain("ds-1", model="housing", target="price")
    assert gateway.json_sent() == {"model": "housing", "dataset": "ds-1", "target": "price"}


def test_model_none_uses_the_unnamed_endpoints_and_a_name_the_named_ones(gateway: FakeGateway) -> None:
    for method, path in [("POST", "/predict"), ("GET", "/models"), ("GET", "/models/current"),
                         ("POST", "/models/v1/activate"), ("POST", "/models/h.2/predict"),
                         ("GET", "/models/h.2/versions"), ("GET", "/models/h.2"),
                         ("POST", "/models/h.2/versions/v1/activate"), ("GET", "/registry")]:
        gateway.answer(method, path, (200, REGISTRY if path == "/registry" else PREDICTED))
    client = Client(gateway.url, "k")
    for model in (None, "h.2"):
        client.predict(ROW, model=model)
        client.models(model=model)
        client.current_model(model=model)
        client.activate("v1", model=model)
    assert [f"{s.method} {s.path}" for s in gateway.seen] == [
        "POST /predict", "GET /models", "GET /models/current", "POST /models/v1/activate",
        "POST /models/h.2/predict", "GET /models/h.2/versions", "GET /models/h.2",
        "POST /models/h.2/versions/v1/activate",
    ]
    assert gateway.json_sent(4) == {"instances": [ROW]}
    assert client.registry() == REGISTRY
    assert [m["name"] for m in client.list_models()] == ["iris", "housing"]


@pytest.mark.parametrize("name", ["current", "", "-x", "a b", "a/b", "iris\n", "x" * 65])
def test_a_bad_model_name_raises_before_anything_is_sent(gateway: FakeGateway, name: str) -> None:
    client = Client(gateway.url, "k")
    for call in (lambda: client.predict(ROW, model=name), lambda: client.current_model(model=name),
                 lambda: client.retrain(model=name), lambda: client.activate("v1", model=name)):
        with pytest.raises(ValueError, match="is not a model name"):
            call()
    assert gateway.seen == []


def test_api_errors_carry_status_code_message_field_and_details(gateway: FakeGateway) -> None:
    gateway.answer("POST", "/retrain", (422, _error("invalid_input", "no dataset 'nope'", "dataset")))
    with pytest.raises(TpotServeAPIError) as caught:
        Client(gateway.url, "k").retrain("nope")
    error = caught.value
    assert (error.status, error.code, error.field) == (422, "invalid_input", "dataset")
    assert error.message == "no dataset 'nope'"
    assert str(error) == "422 invalid_input: no dataset 'nope' (field: dataset)"

    conflict = _error("conflict", "a training is\nalready running", job_id="j0")
    gateway.answer("POST", "/retrain", (409, conflict))
    with pytest.raises(TpotServeAPIError) as caught:
        Client(gateway.url, "k").retrain()
    assert caught.value.details == {"job_id": "j0"}
    assert str(caught.value) == "409 conflict: a training is already running (job: j0)"  # one line


def test_a_non_json_error_still_maps(gateway: FakeGateway) -> None:
    gateway.answer("GET", "/models", (502, b"<html><body>Bad Gateway</body></html>"))
    with pytest.raises(TpotServeAPIError) as caught:
        Client(gateway.url).models()
    assert (caught.value.status, caught.value.code) == (502, "http_error")
    assert "Bad Gateway" in caught.value.message


def test_an_unreachable_gateway_names_the_url() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(TpotServeConnectionError) as caught:
        Client(url).models()
    assert str(caught.value) == f"could not reach {url}: connection refused"


def test_wait_polls_until_the_job_ends_and_reports_each_view(gateway: FakeGateway) -> None:
    gateway.answer(
        "GET",
        "/jobs/j1",
        (200, {"id": "j1", "status": "queued", "progress": None}),
        (200, {"id": "j1", "status": "started", "progress": {"stage": "searching", "generation": 1}}),
        (200, {"id": "j1", "status": "finished", "result": {"version": "v2"}}),
    )
    views: list[dict] = []
    final = Client(gateway.url).wait("j1", poll_interval=0.01, on_progress=views.append)
    assert final["result"] == {"version": "v2"}
    assert [v["status"] for v in views] == ["queued", "started", "finished"]

    gateway.answer("GET", "/jobs/j2", (200, {"id": "j2", "status": "started"}))
    with pytest.raises(TimeoutError, match="j2 still started"):
        Client(gateway.url).wait("j2", poll_interval=0.01, timeout=0.05)


# --- the CLI's pure functions -----------------------------------------------------------
def test_json_rows_in_all_three_shapes() -> None:
    assert parse_json_rows(json.dumps([ROW, ROW])) == [ROW, ROW]
    assert parse_json_rows(json.dumps(ROW)) == [ROW]
    assert parse_json_rows(json.dumps({"instances": [ROW]})) == [ROW]
    with pytest.raises(UsageError, match="row 1 is a int"):
        parse_json_rows("[{}, 3]")
    with pytest.raises(UsageError, match="not valid JSON"):
        parse_json_rows("{nope")
    with pytest.raises(UsageError, match="NaN"):
        parse_json_rows('{"a": NaN}')


def test_csv_rows_become_numbers_where_they_are_numbers() -> None:
    text = "\ufeffSepalLength, SepalWidth ,name,empty,odd\n5.1,3,setosa,,nan\n\n6.7,3.0,x, ,inf\n"
    assert parse_csv_rows(text) == [
        {"SepalLength": 5.1, "SepalWidth": 3, "name": "setosa", "empty": None, "odd": "nan"},
        {"SepalLength": 6.7, "SepalWidth": 3.0, "name": "x", "empty": None, "odd": "inf"},
    ]
    with pytest.raises(UsageError, match="line 2 has 3 values; the header has 2"):
        parse_csv_rows("a,b\n1,2,3\n")
    with pytest.raises(UsageError, match="empty"):
        parse_csv_rows("")
    with pytest.raises(UsageError, match="no rows"):
        parse_rows("a,b\n", "csv")


def test_the_format_comes_from_the_flag_the_extension_or_the_text() -> None:
    assert detect_format("rows.csv", "[1]", "json") == "json"
    assert detect_format("rows.JSON", "a,b") == "json"
    assert detect_format("rows.csv", "{}") == "csv"
    assert detect_format("-", '  [{"a": 1}]') == "json"
    assert detect_format(None, "a,b\n1,2") == "csv"


def test_results_keep_the_input_and_add_prediction_and_probabilities() -> None:
    nested = result_rows([ROW], PREDICTED, flat=False)
    assert nested == [{**ROW, "prediction": "setosa", "probabilities": PREDICTED["probabilities"][0]}]
    flat = result_rows([ROW], PREDICTED, flat=True)
    assert format_csv(flat).splitlines() == [
        "SepalLength,SepalWidth,PetalLength,PetalWidth,prediction,"
        "probability_setosa,probability_versicolor,probability_virginica",
        "5.1,3.5,1.4,0.2,setosa,0.98,0.02,0.0",
    ]
    regression = result_rows([{"a": 1}, {"a": 2, "b": None}], {"predictions": [1.5, 2.5]}, flat=True)
    assert format_csv(regression).splitlines() == ["a,prediction,b", "1,1.5,", "2,2.5,"]


def test_the_models_table_marks_the_current_version_newest_first() -> None:
    table = models_table(
        {
            "current": "v1",
            "versions": [
                {"version": "v1", "created_at": "2026-01-01T00:00:00Z", "dataset": "iris",
                 "task": "classification", "cv_score": 0.95, "holdout_score": 1.0, "current": True},
                {"version": "v2", "created_at": "2026-01-02T00:00:00Z", "dataset": "ds-1",
                 "task": "regression", "cv_score": 0.41234, "holdout_score": None, "current": False},
            ],
        }
    ).splitlines()
    assert table[0].split() == list(MODEL_COLUMNS)
    assert table[1].split() == ["v2", "2026-01-02T00:00:00Z", "ds-1", "regression", "0.4123"]
    assert table[2].split() == ["*", "v1", "2026-01-01T00:00:00Z", "iris", "classification", "0.9500",
                                "1.0000"]


def test_the_registry_table_marks_the_default_model() -> None:
    table = registry_table(REGISTRY).splitlines()
    assert table[0].split() == list(REGISTRY_COLUMNS)
    assert table[1].split() == ["*", "iris", "v1", "2", "iris", "species", "classification", "0.9667",
                                "4", "features,", "3", "classes;", "MIXED:", "1", "version", "differs"]
    assert table[2].split() == ["housing", "(none)", "0"]


# --- the CLI end to end against the fake gateway ----------------------------------------
def test_cli_predicts_csv_from_stdin_and_writes_csv(gateway, monkeypatch, capsys) -> None:
    gateway.answer("POST", "/predict", (200, PREDICTED))
    csv_text = "SepalLength,SepalWidth,PetalLength,PetalWidth\n5.1,3.5,1.4,0.2\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(csv_text))
    assert main(["--url", gateway.url, "predict"]) == 0
    assert gateway.json_sent() == {"instances": [ROW]}
    out, err = capsys.readouterr()
    assert out.splitlines()[1] == "5.1,3.5,1.4,0.2,setosa,0.98,0.02,0.0"
    assert "1 prediction by model v1" in err


def test_cli_exit_codes_and_one_line_errors(gateway, monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.delenv("TPOTSERVE_API_KEY", raising=False)
    monkeypatch.setenv("API_KEY", "from-env")  # the fallback
    monkeypatch.setenv("TPOTSERVE_URL", gateway.url)
    gateway.answer("DELETE", "/jobs/j9", (409, _error("conflict", "job j9 has already ended (finished)")))
    assert main(["cancel", "j9"]) == 1
    assert gateway.seen[-1].headers["Authorization"] == "Bearer from-env"
    assert capsys.readouterr().err == "tpotserve: error: 409 conflict: job j9 has already ended (finished)\n"

    with pytest.raises(SystemExit) as usage:  # argparse: exit 2
        main(["retrain", "--promote", "sometimes"])
    assert usage.value.code == 2
    capsys.readouterr()

    assert main(["predict", str(tmp_path / "missing.csv")]) == 2
    assert capsys.readouterr().err.startswith("tpotserve: error: cannot read ")
    assert gateway.seen[-1].method == "DELETE"  # nothing was sent for bad input


def test_cli_retrain_wait_exits_1_with_the_jobs_error(gateway, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TPOTSERVE_API_KEY", "k")
    gateway.answer("POST", "/retrain", (202, {"job_id": "j5", "status": "queued"}))
    gateway.answer(
        "GET",
        "/jobs/j5",
        (200, {"id": "j5", "status": "started", "progress": {
            "stage": "searching", "generation": 1, "generations_planned": 2, "best_cv_score": 0.9,
            "elapsed_s": 3.0, "budget_mins": 0.25}}),
        (200, {"id": "j5", "status": "failed", "error": "TPOT could not fit:\nno pipeline"}),
    )
    assert main(["--url", gateway.url, "retrain", "--wait", "--poll-interval", "0.01"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["status"] == "failed"
    assert "searching: gen 1/2, best_cv 0.9000, 3s/15s" in err  # the progress bar
    assert err.splitlines()[-1] == "tpotserve: error: job j5 failed: TPOT could not fit: no pipeline"

    gateway.answer("GET", "/jobs/j6", (200, {"id": "j6", "status": "canceled", "error": None}))
    assert main(["--url", gateway.url, "jobs", "j6", "--wait"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == "tpotserve: error: job j6 was canceled"


def test_cli_model_flag_picks_the_named_endpoints(gateway, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TPOTSERVE_URL", gateway.url)
    monkeypatch.setenv("TPOTSERVE_API_KEY", "k")
    gateway.answer("POST", "/models/housing/predict", (200, PREDICTED))
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(ROW)))
    assert main(["predict", "--model", "housing"]) == 0
    assert "1 prediction by model housing, version v1" in capsys.readouterr().err

    gateway.answer("POST", "/retrain", (202, {"job_id": "j7", "status": "queued"}))
    assert main(["retrain", "--model", "housing", "--dataset", "ds-1", "--target", "price"]) == 0
    assert gateway.json_sent() == {"model": "housing", "dataset": "ds-1", "target": "price"}
    capsys.readouterr()

    gateway.answer("POST", "/models/housing/versions/v1/activate",
                   (200, {"model": "housing", "version": "v1", "activated": True, "job_id": "j8"}))
    assert main(["rollback", "v1", "--model", "housing"]) == 0
    assert capsys.readouterr().out == "activated v1 of model housing\n"

    gateway.answer("GET", "/registry", (200, REGISTRY))
    assert main(["registry"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:3] == ["*", "iris", "v1"]

    unknown = _error("not_found", "no model named 'nope'; GET /registry lists them", "model")
    gateway.answer("GET", "/models/nope/versions", (404, unknown))
    assert main(["models", "--model", "nope"]) == 1
    assert capsys.readouterr().err == (
        "tpotserve: error: 404 not_found: no model named 'nope'; GET /registry lists them (field: model)\n"
    )
    sent = len(gateway.seen)
    with pytest.raises(SystemExit) as usage:
        main(["current", "--model", "current"])
    assert usage.value.code == 2 and "is not a model name" in capsys.readouterr().err
    assert len(gateway.seen) == sent


# --- leaderboard, card, drift, feedback, quality -------------------------------------------
LEADERBOARD = {
    "model": "iris", "version": "v2", "scoring": "accuracy", "cv_folds": 5,
    "rows": [
        {"rank": 1, "name": "linear", "source": "baseline", "cv_score": 0.975, "holdout_score": 0.9667,
         "complexity": None, "predict_ms": 0.4123, "tpot_pick": False, "selected": True},
        {"rank": 2, "name": "tpot:ab12", "source": "tpot", "cv_score": 0.9667, "holdout_score": None,
         "complexity": 3, "eval_seconds": 1.2, "generation": 1, "predict_ms": None, "tpot_pick": True,
         "selected": False},
        {"rank": 3, "name": "dummy", "source": "baseline", "cv_score": 0.3333, "holdout_score": 0.3333,
         "complexity": None, "predict_ms": 0.1, "tpot_pick": False, "selected": False},
        {"rank": None, "name": "hist_gradient_boosting", "source": "baseline", "cv_score": None,
         "holdout_score": None, "error": "ValueError: too\nfew rows", "selected": False},
    ],
    "tpot": {"total": 16, "evaluated": 14, "invalid": 2, "timed_out": 0, "shown": 1, "top_k": 10},
    "baselines": True,
    "selection": {"winner": "linear", "source": "baseline", "summary": "linear won on CV score by 0.0083 over tpot"},
}
DRIFT = {
    "model": "iris", "version": "v2", "served": True, "since": "2026-01-01T00:00:00Z",
    "until": "2026-01-01T01:00:00Z", "rows": 250, "enough_rows": True, "min_rows": 200,
    "thresholds": {"js_distance": 0.1, "psi": 0.2}, "drifted_features": ["PetalWidth"], "drifted_share": 0.5,
    "verdict": "drift",
    "features": [
        {"feature": "PetalLength", "kind": "numeric", "rows": 250, "bins": ["≤1.5", "(1.5, 4.4]", ">4.4"],
         "reference_shares": [0.3, 0.4, 0.3], "live_shares": [0.32, 0.38, 0.3], "out_of_range_share": 0.0,
         "psi": 0.00213, "js_distance": 0.0234, "verdict": "ok"},
        {"feature": "PetalWidth", "kind": "numeric", "rows": 250, "bins": ["≤0.3", ">0.3"],
         "reference_shares": [0.3, 0.7], "live_shares": [0.9, 0.1], "out_of_range_share": 0.04,
         "psi": 1.9, "js_distance": 0.51, "verdict": "drift"},
    ],
}
QUALITY = {
    "model": "iris", "task": "classification", "served_version": "v2", "since": "a", "until": "b",
    "versions": [{"version": "v2", "served": True, "rows": 40, "accuracy": 0.95, "holdout_score": 0.9667,
                  "scoring": "accuracy"}],
    "series": [{"version": "v2", "at": "a", "rows": 40, "accuracy": 0.95}],
    "skipped": {"not a class of the model": 2},
}


def test_predict_exposes_the_prediction_id_and_stays_a_dict(gateway: FakeGateway) -> None:
    batch = {**PREDICTED, "predictions": ["setosa", "virginica"]}
    gateway.answer("POST", "/predict", (200, batch), headers={"X-Prediction-ID": "p-1"})
    answer = Client(gateway.url).predict([ROW, ROW])
    assert answer == batch and isinstance(answer, dict)  # what callers had before
    assert answer.prediction_id == "p-1"
    assert answer.row_ids() == ["p-1:0", "p-1:1"]
    gateway.answer("POST", "/models/h/predict", (200, PREDICTED))  # an older server: no header
    older = Client(gateway.url).predict(ROW, model="h")
    assert older.prediction_id is None and older.row_ids() == []


def test_retrain_sends_baselines_description_and_random_state(gateway: FakeGateway) -> None:
    gateway.answer("POST", "/retrain", (202, {"job_id": "j1", "status": "queued"}))
    Client(gateway.url, "k").retrain(baselines=False, description="spring data", random_state=0)
    assert gateway.json_sent() == {"baselines": False, "description": "spring data", "random_state": 0}


def test_documents_of_the_default_model_go_through_its_registry_name(gateway: FakeGateway) -> None:
    gateway.answer("GET", "/registry", (200, REGISTRY))
    gateway.answer("GET", "/models/iris/versions/current/leaderboard", (200, LEADERBOARD))
    gateway.answer("GET", "/models/h.2/versions/v%201/leaderboard", (200, LEADERBOARD))
    gateway.answer("GET", "/models/iris/versions/current/card?format=markdown",
                   (200, "# Model card: iris — v2\n".encode()), headers={"Content-Type": "text/markdown"})
    gateway.answer("GET", "/models/iris/versions/v2/card?format=json", (200, {"model": "iris", "version": "v2"}))
    client = Client(gateway.url)
    assert client.leaderboard() == LEADERBOARD
    assert client.leaderboard(model="h.2", version="v 1") == LEADERBOARD
    assert client.card() == "# Model card: iris — v2\n"  # the Markdown text, UTF-8
    assert client.card(version="v2", fmt="json") == {"model": "iris", "version": "v2"}
    assert [f"{s.method} {s.path}" for s in gateway.seen] == [
        "GET /registry", "GET /models/iris/versions/current/leaderboard",
        "GET /models/h.2/versions/v%201/leaderboard",
        "GET /registry", "GET /models/iris/versions/current/card?format=markdown",
        "GET /registry", "GET /models/iris/versions/v2/card?format=json",
    ]
    with pytest.raises(ValueError, match="fmt"):
        client.card(model="iris", fmt="html")  # type: ignore[arg-type]


def test_drift_quality_and_feedback_on_the_wire(gateway: FakeGateway) -> None:
    gateway.answer("GET", "/drift", (200, DRIFT))
    gateway.answer("GET", "/models/h/drift?window=60&version=v1", (200, DRIFT))
    gateway.answer("GET", "/quality?since=2026-01-01T00%3A00%3A00%2B00%3A00", (200, QUALITY))
    gateway.answer("GET", "/models/h/quality?window=3600", (200, QUALITY))
    accepted = {"model": "iris", "accepted": 1, "skipped": [], "kept_rows": 0}
    gateway.answer("POST", "/feedback", (200, accepted))
    gateway.answer("POST", "/models/h/feedback", (200, accepted))
    client = Client(gateway.url, "k")
    assert client.drift() == DRIFT
    assert client.drift(model="h", window=60, version="v1") == DRIFT
    assert client.quality(since=datetime(2026, 1, 1, tzinfo=timezone.utc)) == QUALITY
    assert client.quality(model="h", window=3600) == QUALITY
    with pytest.raises(ValueError, match="either window or since"):
        client.drift(window=60, since="2026-01-01")
    assert client.feedback([{"id": "p-1:0", "label": "setosa"}]) == accepted
    assert gateway.json_sent() == [{"id": "p-1:0", "label": "setosa"}]
    client.feedback([], model="h", rows=[{**ROW, "species": "setosa"}])
    assert gateway.json_sent() == {"feedback": [], "rows": [{**ROW, "species": "setosa"}]}
    assert len(gateway.seen) == 6  # the bad window sent nothing


def test_the_leaderboard_table_marks_the_published_row() -> None:
    lines = leaderboard_table(LEADERBOARD).splitlines()
    assert lines[0] == "model iris, version v2: scoring accuracy, 5-fold CV"
    assert lines[1].split() == list(LEADERBOARD_COLUMNS)
    assert lines[2].split() == ["*", "1", "linear", "baseline", "0.9750", "0.9667", "0.412"]
    assert lines[3].split() == ["2", "tpot:ab12", "tpot", "0.9667", "3", "TPOT's", "pick"]
    assert lines[5].split()[:4] == ["hist_gradient_boosting", "baseline", "error:", "ValueError:"]
    assert lines[-2] == "selection: linear won on CV score by 0.0083 over tpot"
    assert lines[-1] == "TPOT: 16 pipelines, 14 evaluated, 2 invalid, 0 timed out; 1 shown (top 10)"


def test_the_drift_table_gives_each_feature_then_the_verdict() -> None:
    lines = drift_table(DRIFT).splitlines()
    assert lines[0] == "model iris, version v2 (served): 250 rows from 2026-01-01T00:00:00Z to 2026-01-01T01:00:00Z"
    assert lines[1].split() == list(DRIFT_COLUMNS)
    assert lines[2].split() == ["PetalLength", "numeric", "250", "0.0234", "0.0021", "0.0%", "ok"]
    assert lines[3].split() == ["PetalWidth", "numeric", "250", "0.5100", "1.9000", "4.0%", "drift"]
    assert lines[4] == ("verdict: drift, drifted share 50.0% (1 of 2 features: PetalWidth); "
                        "thresholds: JS distance > 0.1 or PSI > 0.2")
    few = {**DRIFT, "rows": 12, "enough_rows": False, "verdict": "not_enough_rows", "drifted_share": None,
           "drifted_features": [], "features": [{**DRIFT["features"][0], "psi": None, "js_distance": None,
                                                 "verdict": "not_enough_rows"}]}
    assert drift_table(few).splitlines()[-1].startswith("verdict: not_enough_rows (12 rows; at least 200 needed)")


def test_the_quality_table_by_task() -> None:
    lines = quality_table(QUALITY).splitlines()
    assert lines[1].split() == ["served", "version", "rows", "accuracy", "holdout_score", "scoring"]
    assert lines[2].split() == ["*", "v2", "40", "0.9500", "0.9667", "accuracy"]
    assert lines[3] == "skipped: not a class of the model: 2"
    regression = {**QUALITY, "task": "regression", "skipped": {}, "versions": [
        {"version": "v1", "served": False, "rows": 3, "mae": 1.5, "rmse": 2.0, "r2": None, "holdout_score": 0.7,
         "scoring": "r2"}]}
    lines = quality_table(regression).splitlines()
    assert lines[1].split() == ["served", "version", "rows", "mae", "rmse", "r2", "holdout_score", "scoring"]
    assert lines[2].split() == ["v1", "3", "1.5000", "2.0000", "0.7000", "r2"]
    assert quality_table({**QUALITY, "versions": [], "skipped": {}}).splitlines()[-1] == "no feedback in this window"


def test_feedback_input_from_json_or_csv() -> None:
    items = [{"id": "p:0", "label": "setosa"}]
    assert parse_feedback(json.dumps(items), "json") == (items, None)
    both = {"feedback": items, "rows": [{**ROW, "species": "setosa"}]}
    assert parse_feedback(json.dumps(both), "json") == (items, both["rows"])
    assert parse_feedback("id,value\np:0,2.5\np:1,3\n", "csv") == (
        [{"id": "p:0", "value": 2.5}, {"id": "p:1", "value": 3}], None)
    with pytest.raises(UsageError, match="needs an id column"):
        parse_feedback("id,truth\np:0,1\n", "csv")
    with pytest.raises(UsageError, match="no feedback"):
        parse_feedback("[]", "json")
    with pytest.raises(UsageError, match="a list of"):
        parse_feedback('{"other": 1}', "json")


def test_cli_leaderboard_card_drift_quality_and_feedback(gateway, monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setenv("TPOTSERVE_URL", gateway.url)
    monkeypatch.setenv("TPOTSERVE_API_KEY", "k")
    gateway.answer("GET", "/registry", (200, REGISTRY))
    gateway.answer("GET", "/models/iris/versions/current/leaderboard", (200, LEADERBOARD))
    assert main(["leaderboard"]) == 0
    assert capsys.readouterr().out == leaderboard_table(LEADERBOARD)
    gateway.answer("GET", "/models/h/versions/v2/leaderboard", (200, LEADERBOARD))
    assert main(["leaderboard", "--model", "h", "--version", "v2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == LEADERBOARD

    gateway.answer("GET", "/models/iris/versions/current/card?format=markdown", (200, b"# Model card"),
                   headers={"Content-Type": "text/markdown; charset=utf-8"})
    assert main(["card"]) == 0
    assert capsys.readouterr().out == "# Model card\n"
    missing = _error("not_found", "no version 'v9' of 'iris'", "version")
    gateway.answer("GET", "/models/iris/versions/v9/card?format=json", (404, missing))
    assert main(["card", "--version", "v9", "--json"]) == 1
    assert capsys.readouterr().err == "tpotserve: error: 404 not_found: no version 'v9' of 'iris' (field: version)\n"

    gateway.answer("GET", "/drift?window=600", (200, DRIFT))
    assert main(["drift", "--window", "600"]) == 0
    assert capsys.readouterr().out == drift_table(DRIFT)
    with pytest.raises(SystemExit) as usage:
        main(["drift", "--window", "600", "--since", "2026-01-01"])
    assert usage.value.code == 2
    capsys.readouterr()
    no_reference = _error("no_reference", "version 'v1' of 'iris' has no reference profile", "version")
    gateway.answer("GET", "/drift?version=v1", (409, no_reference))
    assert main(["drift", "--version", "v1"]) == 1
    assert capsys.readouterr().err.startswith("tpotserve: error: 409 no_reference: ")

    gateway.answer("GET", "/models/h/quality?since=2026-01-01T00%3A00%3A00Z", (200, QUALITY))
    assert main(["quality", "--model", "h", "--since", "2026-01-01T00:00:00Z"]) == 0
    assert capsys.readouterr().out == quality_table(QUALITY)

    answer = {"model": "iris", "accepted": 1, "kept_rows": 0,
              "skipped": [{"index": 1, "in": "feedback", "id": "p:9", "reason": "unknown or expired id"}]}
    gateway.answer("POST", "/feedback", (200, answer))
    path = tmp_path / "truth.csv"
    path.write_text("id,label\np:0,setosa\np:9,virginica\n")
    assert main(["feedback", str(path)]) == 0
    assert gateway.json_sent() == [{"id": "p:0", "label": "setosa"}, {"id": "p:9", "label": "virginica"}]
    out, err = capsys.readouterr()
    assert out == "model iris: 1 accepted, 1 skipped, 0 rows kept for retraining\n"
    assert err == "skipped feedback[1] (id p:9): unknown or expired id\n"
    monkeypatch.setattr("sys.stdin", io.StringIO("id,truth\np:0,1\n"))
    sent = len(gateway.seen)
    assert main(["feedback", "-"]) == 2 and len(gateway.seen) == sent
    assert "needs an id column" in capsys.readouterr().err


def test_cli_predict_ids_retrain_flags_and_the_winner(gateway, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TPOTSERVE_URL", gateway.url)
    monkeypatch.setenv("TPOTSERVE_API_KEY", "k")
    gateway.answer("POST", "/predict", (200, PREDICTED), headers={"X-Prediction-ID": "p-7"})
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(ROW)))
    assert main(["predict", "--ids", "--output-format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith("id,SepalLength,") and out.splitlines()[1].startswith("p-7:0,5.1,")
    assert "prediction id p-7 (feedback ids p-7:0)" in err

    gateway.answer("POST", "/retrain", (202, {"job_id": "j1", "status": "queued"}))
    assert main(["retrain", "--no-baselines", "--description", "spring data", "--random-state", "7"]) == 0
    assert gateway.json_sent() == {"baselines": False, "description": "spring data", "random_state": 7}
    assert main(["retrain"]) == 0
    assert gateway.json_sent() == {}  # the server's defaults: baselines on
    capsys.readouterr()

    gateway.answer("GET", "/models", (200, {"current": "v2", "versions": [
        {"version": "v1", "current": False, "selection": None},
        {"version": "v2", "current": True, "cv_score": 0.975, "selection": {"winner": "linear"}}]}))
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-1] == "winner"
    assert lines[1].split() == ["*", "v2", "0.9750", "linear"]
    assert lines[2].split() == ["v1"]


def test_cli_shows_a_contract_refusal_in_one_line_and_sends_the_override(gateway, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TPOTSERVE_API_KEY", "k")
    message = ("activating v0 would change the contract of model 'iris' (served: version v1): target species -> "
               "price. Train a new model instead, or send \"replace_contract\": true")
    refusal = (409, _error("contract_changed", message, contract_change={"target": {"from": "species", "to": "price"}}))
    gateway.answer("POST", "/models/v0/activate", refusal, (200, {"version": "v0", "activated": True, "job_id": "a1"}))
    assert main(["--url", gateway.url, "rollback", "v0"]) == 1
    assert capsys.readouterr().err == f"tpotserve: error: 409 contract_changed: {message}\n"
    assert not gateway.seen[-1].body  # no override unless asked
    assert main(["--url", gateway.url, "activate", "v0", "--replace-contract"]) == 0
    assert gateway.json_sent() == {"replace_contract": True}
    assert capsys.readouterr().out == "activated v0\n"

    gateway.answer("POST", "/retrain", (202, {"job_id": "j7", "status": "queued"}))
    assert main(["--url", gateway.url, "retrain", "--dataset", "ds-1", "--target", "price", "--replace-contract"]) == 0
    assert gateway.json_sent() == {"dataset": "ds-1", "target": "price", "replace_contract": True}


SHADOW = {
    "model": "iris", "served_version": "v1", "task": "classification",
    "shadow": {"version": "v2", "share": 0.05, "since": "2026-01-01T00:00:00Z", "reason": "request", "by": "api"},
    "promotion": {"enabled": False, "min_rows": 100, "margin": 0.0, "p_value": 0.05, "max_age_s": 604800},
    "figures": {"served_version": "v1", "shadow_version": "v2", "rows": 200, "agreeing_rows": 190,
                "agreement": 0.95, "latency": {"calls": 200, "mean_ms": 0.8, "p50_ms": 0.75, "p95_ms": 1.9,
                                               "of": "one shadow predict call"},
                "labelled": {"rows": 120, "served": {"accuracy": 0.9}, "shadow": {"accuracy": 0.95},
                             "served_correct": 108, "shadow_correct": 114, "b": 8, "c": 2}},
    "evaluation": {"decision": "wait", "reason": "120 labelled rows both answered: not better yet",
                   "test": "exact McNemar, one-sided", "p_value": 0.0547, "rows": 120},
}


def test_shadow_report_set_and_clear_on_the_wire_and_in_the_cli(gateway, monkeypatch, capsys) -> None:
    gateway.answer("GET", "/shadow", (200, SHADOW))
    gateway.answer("GET", "/models/h/shadow", (200, {"model": "h", "shadow": None}))
    done = {"model": "iris", "shadow": SHADOW["shadow"], "job_id": "j1", "done": True}
    gateway.answer("POST", "/shadow/v2", (200, done))
    gateway.answer("POST", "/models/h/versions/v%2F3/shadow", (202, {"version": "v/3", "job_id": "j2",
                                                                    "done": False, "status": "queued"}))
    gateway.answer("DELETE", "/shadow", (200, {"model": "iris", "cleared": SHADOW["shadow"], "done": True}))
    gateway.answer("DELETE", "/models/h/shadow", (200, {"model": "h", "cleared": None, "done": True}))
    client = Client(gateway.url, "k")
    assert client.shadow() == SHADOW and client.shadow(model="h")["shadow"] is None
    assert client.set_shadow("v2", share=0.25) == done
    assert gateway.json_sent() == {"share": 0.25}
    assert client.set_shadow("v/3", model="h")["done"] is False
    assert client.clear_shadow()["cleared"]["version"] == "v2"

    monkeypatch.setenv("TPOTSERVE_URL", gateway.url)
    monkeypatch.setenv("TPOTSERVE_API_KEY", "k")
    assert main(["shadow"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "model iris: v2 in shadow of v1 since 2026-01-01T00:00:00Z (share 5.0%; request, by api)"
    assert lines[1] == "compared rows 200, agreement 95.0%; shadow latency p50 0.750 ms, p95 1.900 ms over 200 calls"
    assert lines[2].split() == ["role", "version", "labelled_rows", "accuracy"]
    assert lines[3].split() == ["served", "v1", "120", "0.9000"] and lines[4].split() == ["shadow", "v2", "120", "0.9500"]
    assert lines[5].startswith("decision: wait (120 labelled rows") and lines[5].endswith("automatic promotion off")
    assert main(["shadow", "--model", "h"]) == 0
    assert capsys.readouterr().out == "model h: no version in shadow\n"
    assert main(["shadow", "set", "v2", "--share", "0.25"]) == 0
    assert capsys.readouterr().out == "v2 in shadow, answering 5.0% of the served rows\n"
    assert main(["shadow", "set", "v/3", "--model", "h"]) == 0
    assert "queued as job j2" in capsys.readouterr().out
    assert main(["shadow", "clear", "--model", "h"]) == 0
    assert capsys.readouterr().out == "no version was in shadow\n"
    assert main(["shadow", "clear", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cleared"]["version"] == "v2"
