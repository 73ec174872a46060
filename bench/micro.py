"""In-process micro-measurements of the predict path (no HTTP server, no load generator).

    python -m bench.micro [--model forest|tpot] [--repeats N] [--json PATH]

Medians of many calls, each step on its own: scikit-learn's own call, the book's
(DataFrame + predict + predict_proba), the API's LoadedModel.predict, request
parsing, and the whole Flask app through its test client (one row, 1,000 and
10,000 rows). The in-process batch rate the benchmark compares against comes from
here too (``inprocess_batch_rows_per_s``).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .models import BOOK_ROW, FEATURES, BenchModel, build

WORK = Path(__file__).resolve().parent / ".work"


def median_us(fn: Callable[[], Any], repeats: int, warmup: int = 5, budget_s: float = 5.0) -> float:
    """Median wall time of ``fn`` in microseconds (stops early after ``budget_s``)."""
    for _ in range(warmup):
        fn()
    times = []
    deadline = time.perf_counter() + budget_s
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if time.perf_counter() > deadline and len(times) >= 5:
            break
    return statistics.median(times) * 1e6


def batch_rows(n: int, seed: int = 0) -> list[dict[str, float]]:
    """``n`` plausible iris rows (uniform within the training ranges), rounded like a client sends them."""
    rng = np.random.default_rng(seed)
    low = np.array([4.3, 2.0, 1.0, 0.1])
    high = np.array([7.9, 4.4, 6.9, 2.5])
    values = np.round(rng.uniform(low, high, size=(n, len(FEATURES))), 1)
    return [dict(zip(FEATURES, map(float, row))) for row in values]


def inprocess_batch_rate(model: Any, rows: int, repeats: int = 5) -> float:
    """Rows per second of the pipeline's own predict_proba on a ``rows``-row array, one thread."""
    X = np.array([[r[f] for f in FEATURES] for r in batch_rows(rows)], dtype=float)
    us = median_us(lambda: model.predict_proba(X), repeats, warmup=1, budget_s=20.0)
    return rows / (us / 1e6)


def measure(bench_model: BenchModel, repeats: int) -> dict[str, float]:
    import pandas as pd
    from tpotserve_api.predict_request import parse_json, parse_predict

    pipeline = bench_model.load()
    one = np.array([[BOOK_ROW[f] for f in FEATURES]], dtype=float)
    results: dict[str, float] = {}
    results["sklearn_predict_proba_1row_us"] = median_us(lambda: pipeline.predict_proba(one), repeats)

    def book() -> None:
        frame = pd.DataFrame([BOOK_ROW])
        pipeline.predict(frame.to_numpy())
        pipeline.predict_proba(frame.to_numpy())

    results["book_df_predict_and_proba_1row_us"] = median_us(book, repeats)

    app, loaded = _app_for(bench_model)
    results["loaded_model_predict_1row_us"] = median_us(lambda: loaded.predict([list(one[0])]), repeats)
    body_1 = json.dumps(BOOK_ROW).encode()
    results["parse_json_and_predict_1row_us"] = median_us(
        lambda: parse_predict(parse_json(body_1), FEATURES, 10_000), repeats
    )
    body_10k = json.dumps({"instances": batch_rows(10_000)}).encode()
    results["parse_json_10k_us"] = median_us(lambda: parse_json(body_10k), max(repeats // 20, 5))
    parsed = parse_json(body_10k)
    results["parse_predict_10k_us"] = median_us(
        lambda: parse_predict(parsed, FEATURES, 10_000), max(repeats // 20, 5)
    )
    rows_10k = parse_predict(parsed, FEATURES, 10_000).rows
    results["loaded_model_predict_10k_us"] = median_us(
        lambda: loaded.predict(rows_10k), max(repeats // 20, 5)
    )

    client = app.test_client()
    headers = {"Content-Type": "application/json"}
    for label, body, n in (
        ("1row", body_1, repeats),
        ("1k", json.dumps({"instances": batch_rows(1000)}).encode(), max(repeats // 10, 5)),
        ("10k", body_10k, max(repeats // 20, 5)),
    ):

        def post(body: bytes = body) -> None:
            response = client.post("/predict", data=body, headers=headers)
            assert response.status_code == 200, response.get_data(as_text=True)[:300]

        results[f"flask_app_post_{label}_us"] = median_us(post, n)
    results["inprocess_batch_rows_per_s_10k"] = inprocess_batch_rate(pipeline, 10_000)
    return results


def _app_for(bench_model: BenchModel) -> tuple[Any, Any]:
    """The real API (create_app) over a temporary store holding ``bench_model``."""
    import logging

    from tpotserve.settings import load_settings
    from tpotserve.registry import ModelRegistry
    from tpotserve_api.app import create_app

    tmp = Path(tempfile.mkdtemp(prefix="micro-", dir=WORK))
    atexit.register(shutil.rmtree, tmp, True)
    key = "micro-signing-key"
    store = ModelRegistry(tmp / "models", key.encode(), "iris").store()  # the default model
    publish(store, bench_model)
    settings = load_settings(
        model_dir=tmp / "models",
        dataset_dir=tmp / "datasets",
        model_signing_key=key,
        redis_url="redis://127.0.0.1:1/0",
    )
    app = create_app(settings, poll=False)
    logging.getLogger("tpotserve_api.access").setLevel(logging.WARNING)  # no log line per call
    return app, app.extensions["tpotserve"].models.get(None)


def publish(store: Any, bench_model: BenchModel) -> str:
    """Write ``bench_model``'s artifact into a model store and make it current (as the trainer does)."""
    from tpotserve.store import new_version_id

    version = new_version_id()
    store.write_version(
        version, lambda path: shutil.copyfile(bench_model.artifact, path), dict(bench_model.meta)
    )
    store.set_current(version)
    return version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="forest", choices=["forest", "tpot"])
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    (bench_model,) = build([args.model], WORK)
    results = measure(bench_model, args.repeats)
    results = {"model": args.model, "pid": os.getpid(), **{k: round(v, 1) for k, v in results.items()}}
    for key, value in results.items():
        print(f"{key:40s} {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
