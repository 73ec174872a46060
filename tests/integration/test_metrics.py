"""GET /metrics on the live stack: Gunicorn's real workers (prometheus-client's
multiprocess mode) behind nginx, the trainer's side read from Redis and the
model volume, the gateway's allow-list, and a real Prometheus scraping it with
the compose profile's own configuration (monitoring/prometheus.yml).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import requests
from ruamel.yaml import YAML

from native.stack import REPO, free_port, require_binary

from tests.prometheus import Samples, parse, value

from .conftest import API_WORKERS, BOOK_REQUEST, LiveStack, wait_for

ROWS = [
    {"SepalLength": 5.1, "SepalWidth": 3.5, "PetalLength": 1.4, "PetalWidth": 0.2},
    {"SepalLength": 6.0, "SepalWidth": 2.7, "PetalLength": 4.1, "PetalWidth": 1.3},
    {"SepalLength": 6.7, "SepalWidth": 3.0, "PetalLength": 5.2, "PetalWidth": 2.3},
]
SINGLE_PREDICTIONS = 12


def series(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (sample, labels), v in samples.items() if sample == name}


def scrape(stack: LiveStack, request_id: str | None = None) -> Samples:
    # A new connection each time (no session), so Gunicorn's workers share the scrapes out.
    headers = {"X-Request-ID": request_id} if request_id else {}
    response = requests.get(stack.url + "/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(response.text)


def answering_workers(stack: LiveStack, request_ids: list[str]) -> set[int]:
    """The Gunicorn worker pids that answered these requests, from the API's request log."""
    wanted = set(request_ids)

    def pids() -> set[int] | None:
        found = {}
        for line in stack.native.log_text("api").splitlines():
            if '"request_id"' not in line:
                continue
            entry = json.loads(line)
            if entry.get("request_id") in wanted:
                found[entry["request_id"]] = entry["worker_pid"]
        return set(found.values()) if len(found) == len(wanted) else None

    return wait_for(pids, 10, what="the API's log lines of the scrapes")


def test_metrics_add_up_across_every_gunicorn_worker(stack: LiveStack) -> None:
    current = stack.get("/models").json()["current"]
    stack.wait_all_workers_serve(current, timeout_s=30)
    before = scrape(stack)

    expected: Counter[tuple[str, str]] = Counter()
    for _ in range(SINGLE_PREDICTIONS):
        answer = requests.post(stack.url + "/predict", json=BOOK_REQUEST, timeout=10)
        assert answer.status_code == 200
        expected[(answer.json()["model_version"], answer.json()["Prediction"])] += 1
    batch = requests.post(stack.url + "/predict", json={"instances": ROWS}, timeout=10)
    assert batch.status_code == 200
    for predicted in batch.json()["predictions"]:
        expected[(batch.json()["model_version"], predicted)] += 1
    bad = requests.post(stack.url + "/predict", json={"SepalLength": "five"}, timeout=10)
    assert 400 <= bad.status_code < 500

    # Scrape until more than one worker has answered: every one must sum every worker's counts.
    # (Which worker accepts a connection is the kernel's choice: an idle box may give one worker
    # a whole batch, so scrape in batches of 16, up to 10.)
    request_ids: list[str] = []
    scrapes: list[Samples] = []
    for _ in range(10):
        batch = [f"metrics-{uuid.uuid4()}" for _ in range(16)]
        request_ids += batch
        scrapes += [scrape(stack, request_id) for request_id in batch]
        if len(answering_workers(stack, request_ids)) >= 2:
            break
    assert len(answering_workers(stack, request_ids)) >= 2, (
        f"only one Gunicorn worker answered {len(request_ids)} scrapes"
    )
    # (Sums of floats are left out: their order of addition may differ between scrapes.)
    predict_series = [
        {
            key: v
            for key, v in s.items()
            if ("route", "/predict") in key[1] or key[0].startswith("tpotserve_pred")
            if not key[0].endswith("_sum")
        }
        for s in scrapes
    ]
    assert all(p == predict_series[0] for p in predict_series), "workers disagree: values are not shared"
    after = scrapes[-1]

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"method": "POST", "route": "/predict", "status": "200"}
    assert delta("tpotserve_http_requests_total", **ok) == SINGLE_PREDICTIONS + 1
    assert delta("tpotserve_http_request_duration_seconds_count", **ok) == SINGLE_PREDICTIONS + 1
    assert delta("tpotserve_http_request_duration_seconds_bucket", **ok, le="+Inf") == SINGLE_PREDICTIONS + 1
    refused = {"method": "POST", "route": "/predict", "status": str(bad.status_code)}
    assert delta("tpotserve_http_requests_total", **refused) == 1
    assert delta("tpotserve_http_request_duration_seconds_count", **refused) == 1

    counted = {
        (dict(labels)["model_version"], dict(labels)["predicted_class"]): v - value(
            before, "tpotserve_predictions_total", **dict(labels)
        )
        for labels, v in series(after, "tpotserve_predictions_total").items()
    }
    assert {key: v for key, v in counted.items() if v} == dict(expected)

    # The model: what every worker serves, and that each loaded one.
    serving = {dict(labels)["version"] for labels, v in series(after, "tpotserve_model_serving").items()
               if v and dict(labels)["model"] == "iris"}
    assert serving == {current}
    assert value(after, "tpotserve_api_workers") == API_WORKERS
    assert value(after, "tpotserve_model_load_seconds_count", model="iris") >= API_WORKERS
    assert value(after, "tpotserve_model_load_seconds_sum", model="iris") > 0

    # The trainer's side: RQ's registries and the stored versions.
    assert value(after, "tpotserve_queue_up") == 1
    training = {
        dict(labels)["status"]: v
        for labels, v in series(after, "tpotserve_queue_jobs").items()
        if dict(labels)["queue"] == "training"
    }
    assert set(training) == {"queued", "started", "finished", "failed", "canceled"}
    assert training["finished"] >= 1, "the bootstrap training finished"
    stored = stack.get("/models").json()["versions"]
    assert stored
    for meta in stored:
        version, scoring = meta["version"], meta.get("scoring") or ""
        if meta.get("cv_score") is not None:
            cv = value(after, "tpotserve_training_cv_score", model="iris", version=version, scoring=scoring)
            assert cv == meta["cv_score"]
        if meta.get("training_seconds") is not None:
            seconds = value(after, "tpotserve_training_duration_seconds", model="iris", version=version)
            assert seconds == meta["training_seconds"]


def test_metrics_are_refused_to_addresses_outside_the_allow_list(stack: LiveStack) -> None:
    """METRICS_ALLOW is 127.0.0.1 here: a client on 127.0.0.2 stands for the outside world."""
    port = int(stack.url.rsplit(":", 1)[1])
    outside = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=("127.0.0.2", 0))
    try:
        outside.request("GET", "/metrics")
        response = outside.getresponse()
        body = json.loads(response.read())
    finally:
        outside.close()
    assert response.status == 403
    assert body["error"]["code"] == "forbidden"
    # The same address reaches everything else.
    other = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=("127.0.0.2", 0))
    try:
        other.request("GET", "/healthz")
        assert other.getresponse().status == 200
    finally:
        other.close()


def test_prometheus_scrapes_the_api_with_the_compose_profiles_configuration(
    stack: LiveStack, tmp_path: Path
) -> None:
    binary = require_binary("prometheus")  # Debian's package `prometheus`
    config = YAML(typ="safe", pure=True).load((REPO / "monitoring" / "prometheus.yml").read_text())
    job = config["scrape_configs"][0]
    # Compose finds every api container by DNS; here the one native API, like compose scraped directly.
    assert job.pop("dns_sd_configs"), "monitoring/prometheus.yml finds the API containers by DNS"
    job["static_configs"] = [{"targets": [f"127.0.0.1:{stack.native.api_port}"]}]
    config["global"]["scrape_interval"] = "1s"
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    api = f"http://127.0.0.1:{port}/api/v1"
    log_path = tmp_path / "prometheus.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def get(path: str, **params: str) -> dict | None:
            if proc.poll() is not None:
                log_tail = log_path.read_text()[-3000:]
                raise AssertionError(f"prometheus exited with {proc.returncode}:\n{log_tail}")
            try:
                response = requests.get(api + path, params=params, timeout=5)
            except requests.ConnectionError:
                return None
            return response.json()["data"] if response.status_code == 200 else None

        def target_up() -> dict | None:
            data = get("/targets")
            targets = data["activeTargets"] if data else []
            return targets[0] if targets and targets[0]["health"] == "up" else None

        started = time.monotonic()
        target = wait_for(target_up, 60, interval_s=0.5, what="Prometheus reporting the API target up")
        assert target["labels"]["job"] == "tpotserve-api"
        current = stack.get("/models").json()["current"]
        query = f'tpotserve_model_serving{{version="{current}"}}'
        result = wait_for(lambda: (get("/query", query=query) or {}).get("result"), 30, interval_s=0.5,
                          what=f"{query} in Prometheus")
        assert float(result[0]["value"][1]) == 1
        requests_total = get("/query", query='sum(tpotserve_http_requests_total{route="/predict"})')["result"]
        assert requests_total and float(requests_total[0]["value"][1]) > 0
        took = time.monotonic() - started
        print(f"[metrics] Prometheus scraped the API and answered queries in {took:.1f} s")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
