"""How long `POST /models/<version>/activate` holds an API worker, and what it costs predictions.

    .venv/bin/python -m bench.activate [--rounds 40]

A native stack of what activation touches (Redis, the control worker, the API with two
Gunicorn workers, nginx; no trainer), two stored versions of the forest model, then:

1. ``rounds`` activations one after the other, alternating the versions: their latency
   (median, p90, max), each answered 200 (the activation done) or 202 (still queued);
2. one client posting the book's request for a few seconds, alone and then with a second
   client activating in a loop: predictions per second in both, as a ratio.

Prints the figures; nothing is asserted (tests/integration covers correctness).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import requests

from bench.models import BOOK_ROW, forest_model
from native.stack import NativeStack, free_port
from tpotserve.registry import ModelRegistry
from tpotserve.store import new_version_id

API_KEY = "bench-activate-key"
SIGNING_KEY = "bench-activate-signing-key"
PREDICT_WINDOW_S = 8.0


def _store_two_versions(model_dir: Path, work: Path) -> list[str]:
    model = forest_model(work)
    store = ModelRegistry(model_dir, SIGNING_KEY.encode(), "iris").store()  # the default model
    versions = []
    for _ in range(2):
        version = new_version_id()
        store.write_version(version, lambda path: shutil.copyfile(model.artifact, path), dict(model.meta))
        versions.append(version)
        time.sleep(1.1)  # version ids are per second
    store.set_current(versions[0])
    return versions


def _predictions_per_s(url: str, seconds: float) -> float:
    session = requests.Session()
    done, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        response = session.post(url + "/predict", json=BOOK_ROW, timeout=10)
        assert response.status_code == 200, response.text
        done += 1
    return done / seconds


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.activate")
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-activate-"))
    native = NativeStack(
        data_dir=work / "data",
        gateway_port=free_port(),
        env={"API_KEY": API_KEY, "MODEL_SIGNING_KEY": SIGNING_KEY, "API_WORKERS": "2",
             "BOOTSTRAP_ON_START": "false", "PREDICT_RATE_LIMIT": "1000000r/s",
             "RETRAIN_RATE_LIMIT": "1000000r/m"},
    )
    try:
        versions = _store_two_versions(native.model_dir, work)
        native.start(services=("redis", "worker-control", "api", "nginx"))
        url, admin = native.gateway_url, {"Authorization": f"Bearer {API_KEY}"}
        session = requests.Session()

        def activate(version: str) -> tuple[float, int]:
            started = time.perf_counter()
            response = session.post(f"{url}/models/{version}/activate", headers=admin, timeout=30)
            assert response.status_code in (200, 202), response.text
            return time.perf_counter() - started, response.status_code

        activate(versions[1])  # warm: the control worker's first job
        runs = [activate(versions[i % 2]) for i in range(args.rounds)]
        took = sorted(seconds * 1000 for seconds, _ in runs)
        codes = {code: sum(1 for _, c in runs if c == code) for code in (200, 202)}
        print(f"activate x{args.rounds}: median {statistics.median(took):.1f} ms, "
              f"p90 {took[int(0.9 * (len(took) - 1))]:.1f} ms, max {took[-1]:.1f} ms; answers {codes}")

        alone = _predictions_per_s(url, PREDICT_WINDOW_S)
        stop = threading.Event()
        activations = [0]

        def keep_activating() -> None:
            while not stop.is_set():
                activate(versions[activations[0] % 2])
                activations[0] += 1

        loop = threading.Thread(target=keep_activating)
        loop.start()
        try:
            meanwhile = _predictions_per_s(url, PREDICT_WINDOW_S)
        finally:
            stop.set()
            loop.join()
        print(f"predictions/s, one client: {alone:.0f} alone, {meanwhile:.0f} while activating "
              f"({activations[0]} activations): ratio {meanwhile / alone:.2f}")
        print(f"(load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores)")
    finally:
        native.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
