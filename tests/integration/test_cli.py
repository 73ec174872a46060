"""The `tpotserve` command line against the real native stack, run as a subprocess.

The one training here is tiny and uses promote=never, so the served model does
not change under the other tests.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from native.stack import free_port
from tpotserve_cli.tables import DRIFT_COLUMNS, LEADERBOARD_COLUMNS, MODEL_COLUMNS, REGISTRY_COLUMNS

from .conftest import API_KEY, LiveStack, wait_for

IRIS = ("setosa", "versicolor", "virginica")
HEADER = ["SepalLength", "SepalWidth", "PetalLength", "PetalWidth"]
# Typical flowers of each species, far from the class boundaries.
ROWS = [
    {"SepalLength": 5.0, "SepalWidth": 3.4, "PetalLength": 1.5, "PetalWidth": 0.2},
    {"SepalLength": 5.9, "SepalWidth": 2.8, "PetalLength": 4.3, "PetalWidth": 1.3},
    {"SepalLength": 7.7, "SepalWidth": 3.0, "PetalLength": 6.1, "PetalWidth": 2.3},
]
TINY = ["--max-time-mins", "0.5", "--generations", "2", "--population-size", "6", "--cv", "3"]


def tpotserve(stack: LiveStack, *args: str, stdin: str | None = None, key: str | None = API_KEY,
              timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would, configured through the environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("API_KEY", "TPOTSERVE_API_KEY", "TPOTSERVE_URL")}
    env["TPOTSERVE_URL"] = stack.url
    if key is not None:
        env["TPOTSERVE_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "tpotserve_cli.main", *args],
        input=stdin, capture_output=True, text=True, env=env, timeout=timeout_s,
    )


def _api_predictions(stack: LiveStack) -> list[str]:
    response = stack.post("/predict", json={"instances": ROWS})
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def _served(stack: LiveStack) -> str:
    return stack.get("/readyz").json()["model_version"]


def test_predict_a_csv_file_writes_csv_rows_with_classes(stack: LiveStack, tmp_path) -> None:
    path = tmp_path / "flowers.csv"
    lines = [",".join(HEADER), *(",".join(str(row[h]) for h in HEADER) for row in ROWS)]
    path.write_text("\n".join(lines) + "\n")
    run = tpotserve(stack, "predict", str(path), key=None)  # /predict is open
    assert run.returncode == 0, run.stderr
    out = list(csv.DictReader(io.StringIO(run.stdout)))
    # The API's own answer, not the species: how good the small-budget model is is not the CLI's business.
    assert [row["prediction"] for row in out] == _api_predictions(stack)
    assert {row["prediction"] for row in out} <= set(IRIS)
    assert [{h: float(row[h]) for h in HEADER} for row in out] == ROWS
    for row in out:
        probabilities = {c: float(row[f"probability_{c}"]) for c in IRIS}
        assert max(probabilities, key=probabilities.get) == row["prediction"]
    assert "3 predictions by model " in run.stderr


def test_predict_json_on_stdin_in_each_shape(stack: LiveStack) -> None:
    run = tpotserve(stack, "predict", stdin=json.dumps({"instances": ROWS}))
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)  # JSON in, JSON out
    assert [row["prediction"] for row in out] == _api_predictions(stack)
    assert [{h: row[h] for h in HEADER} for row in out] == ROWS
    assert all(set(row["probabilities"]) == set(IRIS) for row in out)

    one = tpotserve(stack, "predict", "--output-format", "csv", stdin=json.dumps(ROWS[2]))
    assert one.returncode == 0, one.stderr
    assert [row["prediction"] for row in csv.DictReader(io.StringIO(one.stdout))] == _api_predictions(stack)[2:]


def test_models_table_marks_the_current_version(stack: LiveStack) -> None:
    run = tpotserve(stack, "models")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].split() == list(MODEL_COLUMNS)
    current = stack.get("/models").json()["current"]
    marked = [line.split() for line in lines[1:] if line.startswith("*")]
    assert len(marked) == 1 and marked[0][1] == current
    assert marked[0][3:5] == ["iris", "classification"]


def test_registry_and_model_flag_on_the_default_model(stack: LiveStack) -> None:
    """--model with the default model's name gives what the unnamed endpoints give (no training here)."""
    registry = stack.get("/registry").json()
    listed = tpotserve(stack, "registry")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == list(REGISTRY_COLUMNS)
    marked = [line.split() for line in lines[1:] if line.startswith("*")]
    assert [row[1:3] for row in marked] == [[registry["default"], registry["models"][0]["current_version"]]]

    named = tpotserve(stack, "models", "--model", registry["default"])
    assert named.returncode == 0, named.stderr
    assert named.stdout == tpotserve(stack, "models").stdout
    predicted = tpotserve(stack, "predict", "--model", registry["default"], stdin=json.dumps(ROWS))
    assert predicted.returncode == 0, predicted.stderr
    assert [row["prediction"] for row in json.loads(predicted.stdout)] == _api_predictions(stack)
    assert f"3 predictions by model {registry['default']}, version " in predicted.stderr


def test_retrain_wait_shows_progress_and_keeps_the_served_model(stack: LiveStack) -> None:
    served = _served(stack)
    run = tpotserve(stack, "retrain", *TINY, "--promote", "never", "--queue", "--wait",
                    "--poll-interval", "0.5", timeout_s=300)
    assert run.returncode == 0, run.stderr
    job = json.loads(run.stdout)
    assert job["status"] == "finished"
    assert job["result"]["published"] is False
    assert "searching" in run.stderr and "100%|" in run.stderr  # the tqdm bar, driven by progress
    assert "gen " in run.stderr and "best_cv " in run.stderr and "s/30s" in run.stderr
    assert f"job {job['id']} finished: version {job['result']['version']}" in run.stderr
    assert _served(stack) == served

    shown = tpotserve(stack, "jobs", job["id"])
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["result"]["version"] == job["result"]["version"]

    listed = tpotserve(stack, "models")
    new_line = next(line for line in listed.stdout.splitlines() if job["result"]["version"] in line)
    assert not new_line.startswith("*")  # stored, not served

    ended = tpotserve(stack, "cancel", job["id"])
    assert ended.returncode == 1
    assert ended.stderr.startswith("tpotserve: error: 409 conflict: ") and ended.stderr.count("\n") == 1

    again = tpotserve(stack, "activate", served)  # the served one: a no-op activation
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"activated {served}\n"


def test_datasets_upload_and_list(stack: LiveStack, tmp_path) -> None:
    path = tmp_path / "flowers-for-cli.csv"
    path.write_text(",".join([*HEADER, "species"]) + "\n" + "".join(
        ",".join([*(str(r[h]) for h in HEADER), species]) + "\n" for r, species in zip(ROWS, IRIS)
    ))
    run = tpotserve(stack, "datasets", "upload", str(path))
    assert run.returncode == 0, run.stderr
    dataset_id = run.stdout.split()[0]
    assert dataset_id.startswith("ds-")
    assert run.stdout == f"{dataset_id}  uploaded: 3 rows, 5 columns\n"
    listed = tpotserve(stack, "datasets", "list")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert rows[dataset_id][1:4] == ["flowers-for-cli.csv", "3", "5"]
    assert "iris" in rows


@pytest.mark.parametrize(
    ("args", "key", "expected"),
    [
        (["retrain", "--dataset", "no-such-dataset", *TINY], API_KEY,
         "tpotserve: error: 422 invalid_input: unknown dataset 'no-such-dataset'"),
        (["retrain", *TINY], "wrong-key", "tpotserve: error: 401 unauthorized: the API key is not valid"),
        (["activate", "19990101T000000Z-000000"], API_KEY, "tpotserve: error: 404 not_found: "),
        (["jobs", "no-such-job"], API_KEY, "tpotserve: error: 404 not_found: no job 'no-such-job'"),
        (["models", "--model", "no-such-model"], API_KEY,
         "tpotserve: error: 404 not_found: no model named 'no-such-model'"),
    ],
)
def test_api_errors_are_one_line_and_exit_1(
    stack: LiveStack, args: list[str], key: str, expected: str
) -> None:
    run = tpotserve(stack, *args, key=key)
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.startswith(expected) and run.stderr.count("\n") == 1, run.stderr
    if "--dataset" in args:
        assert run.stderr.endswith("(field: dataset)\n")


def test_usage_errors_exit_2_and_unreachable_gateways_are_named(stack: LiveStack) -> None:
    bad_flag = tpotserve(stack, "retrain", "--promote", "sometimes")
    assert bad_flag.returncode == 2 and "invalid choice" in bad_flag.stderr
    bad_input = tpotserve(stack, "predict", "--format", "json", stdin="not json")
    assert bad_input.returncode == 2 and "not valid JSON" in bad_input.stderr

    url = f"http://127.0.0.1:{free_port()}"
    down = tpotserve(stack, "--url", url, "models")
    assert down.returncode == 1
    assert down.stderr == f"tpotserve: error: could not reach {url}: connection refused\n"


def test_leaderboard_and_card_of_the_served_model(stack: LiveStack) -> None:
    """The bootstrap iris version has both documents: the CLI shows what the API holds."""
    default = stack.get("/registry").json()["default"]
    board = stack.get(f"/models/{default}/versions/current/leaderboard").json()
    run = tpotserve(stack, "leaderboard")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"model {default}, version {board['version']}: scoring {board['scoring']}")
    assert lines[1].split() == list(LEADERBOARD_COLUMNS)
    rows = lines[2:2 + len(board["rows"])]
    assert [line.lstrip("* ").split()[1] for line in rows] == [r["name"] for r in board["rows"]]
    selected = [line.split()[2] for line in rows if line.startswith("*")]
    assert selected == [r["name"] for r in board["rows"] if r["selected"]]
    assert any(line.startswith("TPOT: ") for line in lines)
    as_json = tpotserve(stack, "leaderboard", "--model", default, "--version", board["version"], "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == board

    card = tpotserve(stack, "card")
    assert card.returncode == 0, card.stderr
    assert card.stdout.rstrip("\n") == stack.get(f"/models/{default}/versions/current/card").text.rstrip("\n")
    card_json = tpotserve(stack, "card", "--json")
    assert card_json.returncode == 0, card_json.stderr
    assert json.loads(card_json.stdout) == stack.get(f"/models/{default}/versions/current/card?format=json").json()

    listed = tpotserve(stack, "models", "--json")
    current = next(v for v in json.loads(listed.stdout)["versions"] if v["current"])
    table = tpotserve(stack, "models").stdout.splitlines()
    assert table[0].split()[-1] == "winner"
    marked = next(line for line in table if line.startswith("*"))
    assert marked.split()[-1] == current["selection"]["winner"]

    missing = tpotserve(stack, "card", "--version", "19990101T000000Z-000000")
    assert missing.returncode == 1 and missing.stderr.startswith("tpotserve: error: 404 not_found: ")


def test_drift_after_predictions_and_feedback_into_quality(stack: LiveStack) -> None:
    """250 rows from the training ranges through `tpotserve predict`, then `tpotserve drift` prints
    every feature; the predictions fed back as their own labels count in `tpotserve quality`."""
    batch = [ROWS[i % len(ROWS)] for i in range(250)]
    predicted = tpotserve(stack, "predict", "--ids", "--output-format", "csv", stdin=json.dumps(batch))
    assert predicted.returncode == 0, predicted.stderr
    assert "prediction id " in predicted.stderr
    out = list(csv.DictReader(io.StringIO(predicted.stdout)))
    assert len(out) == 250 and out[0]["id"].endswith(":0") and out[-1]["id"].endswith(":249")

    def drifted() -> subprocess.CompletedProcess[str] | None:
        run = tpotserve(stack, "drift", "--json")
        assert run.returncode == 0, run.stderr
        return run if json.loads(run.stdout)["rows"] >= 250 else None

    report = json.loads(wait_for(drifted, 30, interval_s=0.5, what="250 live rows in GET /drift").stdout)
    run = tpotserve(stack, "drift", "--window", "3600")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[1].split() == list(DRIFT_COLUMNS)
    assert [line.split()[0] for line in lines[2:2 + len(HEADER)]] == [f["feature"] for f in report["features"]]
    assert sorted(f["feature"] for f in report["features"]) == sorted(HEADER)
    assert lines[-1].startswith(f"verdict: {report['verdict']}")

    truth = "id,label\n" + "".join(f"{row['id']},{row['prediction']}\n" for row in out[:3])
    fed = tpotserve(stack, "feedback", "--format", "csv", stdin=truth)
    assert fed.returncode == 0, fed.stderr
    assert fed.stdout.startswith(f"model {report['model']}: 3 accepted, 0 skipped")
    again = tpotserve(stack, "feedback", "--format", "csv", stdin=truth)  # counted once
    assert again.returncode == 0 and "0 accepted, 3 skipped" in again.stdout
    assert again.stderr.count("already counted") == 3

    quality = tpotserve(stack, "quality", "--json")
    assert quality.returncode == 0, quality.stderr
    served = next(v for v in json.loads(quality.stdout)["versions"] if v["served"])
    assert served["rows"] >= 3
    table = tpotserve(stack, "quality")
    assert table.stdout.splitlines()[1].split()[:4] == ["served", "version", "rows", "accuracy"]
