"""One real native stack for the integration tests: redis-server, two RQ
workers, Gunicorn and nginx, started through the same launcher as `make run`.

The session starts without the training worker, records what a client sees
on a cold start, then starts the worker and waits for the bootstrap model.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from redis import Redis

from native.processes import start_group
from native.stack import REPO, NativeStack, free_port
from tests.tools import wait_for

API_KEY = "integration-test-key"
SIGNING_KEY = "integration-signing-key"
API_WORKERS = 2
BOOK_REQUEST = {"SepalLength": 5.1, "SepalWidth": 3.5, "PetalLength": 0.2, "PetalWidth": 3.4}
# Small, real TPOT runs: a generation or two of a handful of pipelines.
BUDGET = {
    "TPOT_MAX_TIME_MINS": "0.5",
    "TPOT_GENERATIONS": "2",
    "TPOT_POPULATION_SIZE": "6",
    "TPOT_CV": "3",
}
BOOTSTRAP_TIMEOUT_S = 240


def start_launcher(env: dict[str, str]) -> subprocess.Popen:
    """`make run`'s launcher (`python -m native`) with ``env``, its console on a text pipe,
    in a process group of its own."""
    return start_group([sys.executable, "-m", "native"], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)


@dataclass
class LiveStack:
    native: NativeStack
    url: str
    cold_predict: requests.Response
    cold_readyz: requests.Response
    bootstrap_version: str
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def model_dir(self) -> Path:
        return self.native.model_dir

    @property
    def store_dir(self) -> Path:
        """The default model's store: <MODEL_DIR>/models/iris (shared/tpotserve/registry.py)."""
        return self.native.model_dir / "models" / "iris"

    def redis(self) -> Redis:
        return Redis(port=self.native.redis_port)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.post(self.url + path, timeout=30, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.get(self.url + path, timeout=30, **kwargs)

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    def upload_csv(self, data: Any) -> dict[str, Any]:
        """Upload a CSV (bytes, or a DataFrame written without its index) as the admin; the data set's JSON."""
        body = data if isinstance(data, bytes) else data.to_csv(index=False).encode()
        response = self.post("/datasets", data=body, headers={**self.admin(), "Content-Type": "text/csv"})
        assert response.status_code in (200, 201), response.text
        return response.json()

    def predict_book(self) -> requests.Response:
        return self.post("/predict", json=BOOK_REQUEST)

    def worker_versions(self, min_requests: int = 30, timeout_s: float = 10.0) -> dict[int, str | None]:
        """{gunicorn worker pid: version it serves}, once every worker has answered."""
        seen: dict[int, str | None] = {}
        deadline = time.monotonic() + timeout_s
        count = 0
        while count < min_requests or len(seen) < API_WORKERS:
            # A new connection per request, so Gunicorn's workers share them out.
            body = requests.get(self.url + "/readyz", timeout=10).json()
            seen[body["worker_pid"]] = body["model_version"]
            count += 1
            if time.monotonic() > deadline:
                raise AssertionError(f"saw only workers {seen} in {timeout_s} s")
        return seen

    def wait_all_workers_serve(self, version: str, timeout_s: float) -> float:
        """Seconds until every API worker reports ``version``."""
        started = time.monotonic()
        wait_for(
            lambda: set(self.worker_versions(min_requests=10).values()) == {version},
            timeout_s,
            interval_s=0.05,
            what=f"every worker serving {version}",
        )
        return time.monotonic() - started

    def wait_job(self, job_id: str, timeout_s: float = 240) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            body = self.get(f"/jobs/{job_id}").json()
            return body if body["status"] in ("finished", "failed", "canceled") else None

        return wait_for(done, timeout_s, interval_s=0.25, what=f"job {job_id}")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    env = {
        "API_KEY": API_KEY,
        "API_WORKERS": str(API_WORKERS),
        "MODEL_POLL_INTERVAL_S": "0.5",
        "DATASET_MAX_COLUMNS": "50",
        # Tests refer back to earlier versions; retention itself is unit-tested.
        "MODEL_KEEP": "100",
        "MODEL_SIGNING_KEY": SIGNING_KEY,
        # The suite posts many retrains quickly; a dedicated test checks the 429.
        "RETRAIN_RATE_LIMIT": "600r/m",
        "RETRAIN_RATE_BURST": "60",
        # The load tests send over 1,000 predictions a second from 127.0.0.1 on a quiet machine,
        # above the default per-address limit (1000r/s): what they test is swaps and faults, not
        # the limit (nginx's limit_req, the same as the retrain limit test_gateway checks).
        "PREDICT_RATE_LIMIT": "100000r/s",
        # test_monitoring compares one-second windows of live rows; counts flush twice a second.
        "MONITORING_BUCKET_S": "1",
        "MONITORING_FLUSH_S": "0.5",
        # test_automation's scheduler evaluates the policies every second (not every minute).
        "SCHEDULER_INTERVAL_S": "1",
        # ...and its model "auto" keeps its labelled live rows, for a policy to train on them.
        "FEEDBACK_KEEP_ROWS": "auto",
        **BUDGET,
    }
    native = NativeStack(data_dir=tmp_path_factory.mktemp("stack"), gateway_port=free_port(), env=env)
    try:
        # Everything but the training worker: no model can appear yet.
        native.start(services=("redis", "worker-control", "api", "nginx"))
        cold_predict = requests.post(native.gateway_url + "/predict", json=BOOK_REQUEST, timeout=10)
        cold_readyz = requests.get(native.gateway_url + "/readyz", timeout=10)
        native.start_service("worker")

        def served() -> str | None:
            response = requests.post(native.gateway_url + "/predict", json=BOOK_REQUEST, timeout=10)
            return response.json()["model_version"] if response.status_code == 200 else None

        version = wait_for(served, BOOTSTRAP_TIMEOUT_S, interval_s=0.5, what="the bootstrap model")
        yield LiveStack(
            native=native,
            url=native.gateway_url,
            cold_predict=cold_predict,
            cold_readyz=cold_readyz,
            bootstrap_version=version,
        )
    finally:
        native.stop()
