#!/usr/bin/env python3
"""Compare the API's answers of two checkouts byte for byte: a refactor's check.

    .venv/bin/python scripts/compare-answers.py ../old-checkout        # this checkout vs that one

One store (two signed versions of an iris pipeline, made with this checkout's code), then 41
requests in process (Flask's test client, Redis unreachable on purpose, so the queue answers are
the 503s) against each checkout's app: predictions and their errors, listings, the OpenAPI
document, leaderboard / card / drift / feedback / policy answers, V2, routing errors. Status,
headers and body are compared; Date, X-Request-ID and X-Prediction-ID (and ids in bodies) are
left out, and so is /readyz's body (its load time and pid differ from run to run). Exit 1 on a
difference, which is printed as a unified diff.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
BOOK = {"SepalLength": 5.1, "SepalWidth": 3.5, "PetalLength": 1.4, "PetalWidth": 0.2}


def setup(root: Path) -> None:
    import numpy as np
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from tests.unit import test_api as t
    from tpotserve.store import ModelStore

    store = ModelStore(root / "models" / "models" / "iris", t.SIGNING_KEY.encode())
    bunch = load_iris()
    X = np.asarray(bunch.data, dtype=float)
    y = np.array([str(bunch.target_names[i]) for i in bunch.target])
    model = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=1000))]).fit(X, y)
    t.publish(store, "v1", model, t.make_meta(model, X))
    t.publish(store, "v2", model, t.make_meta(model, X, reason="second"), activate=False)


def answers(root: Path) -> list[dict]:
    from tests.unit import test_api as t
    from tpotserve.store import ModelStore
    from tpotserve_api.app import create_app

    store = ModelStore(root / "models" / "models" / "iris", t.SIGNING_KEY.encode())
    client = create_app(t.settings_for(store), poll=False).test_client()
    admin = {"Authorization": f"Bearer {t.KEY}"}
    v2_input = {"inputs": [{"name": "SepalLength", "shape": [1], "datatype": "FP64", "data": [5.1]}]}
    requests = [
        ("POST", "/predict", {"json": BOOK}), ("POST", "/predict", {"json": {"instances": [BOOK, BOOK]}}),
        ("POST", "/predict", {"json": {"SepalLength": 5.1}}),
        ("POST", "/predict", {"data": b"{bad", "content_type": "application/json"}),
        ("POST", "/predict", {"data": b"x" * 3_000_000, "content_type": "application/json"}),
        ("POST", "/predict", {"data": b"a,b", "content_type": "text/csv"}),
        ("POST", "/predict", {"json": {**BOOK, "SepalLength": "x"}}),
        ("POST", "/predict", {"json": {**BOOK, "SepalLength": 1e300}}),
        ("POST", "/models/iris/predict", {"json": BOOK}), ("POST", "/models/nope/predict", {"json": BOOK}),
        ("GET", "/models", {}), ("GET", "/models/current", {}), ("GET", "/models/iris", {}),
        ("GET", "/models/iris/versions", {}), ("GET", "/registry", {}), ("GET", "/openapi.json", {}),
        ("GET", "/healthz", {}), ("GET", "/readyz", {}),
        ("GET", "/models/iris/versions/v1/leaderboard", {}), ("GET", "/models/iris/versions/v1/card", {}),
        ("GET", "/drift", {}), ("GET", "/quality", {}),
        ("POST", "/feedback", {"json": [{"id": "x", "label": "setosa"}]}), ("POST", "/feedback", {"json": {"nope": 1}}),
        ("GET", "/shadow", {}), ("POST", "/retrain", {"json": {}}),
        ("POST", "/retrain", {"json": {"cv": 1000}, "headers": admin}), ("POST", "/retrain", {"json": {}, "headers": admin}),
        ("POST", "/models/v2/activate", {"headers": admin}), ("GET", "/jobs/nope", {}), ("GET", "/datasets", {}),
        ("GET", "/datasets/nope", {}), ("PUT", "/models/iris/policy", {"json": {"surprise": 1}, "headers": admin}),
        ("GET", "/models/iris/policy", {"headers": admin}), ("GET", "/v2", {}), ("GET", "/v2/models/iris", {}),
        ("GET", "/v2/health/ready", {}), ("POST", "/v2/models/iris/infer", {"json": v2_input}),
        ("POST", "/v2/models/iris/infer", {"data": b"{bad", "content_type": "application/json"}),
        ("GET", "/nope", {}), ("DELETE", "/predict", {}),
        # The bodies the one validator (schema.validated) answers for: not an object, a bad type,
        # a bad nested field, an unknown one.
        ("POST", "/retrain", {"json": [1], "headers": admin}),
        ("POST", "/retrain", {"json": {"generations": "many"}, "headers": admin}),
        ("POST", "/models/v2/activate", {"json": {"replace_contract": "maybe"}, "headers": admin}),
        ("POST", "/models/v2/activate", {"json": [], "headers": admin}),
        ("PUT", "/models/iris/policy", {"json": [1], "headers": admin}),
        ("PUT", "/models/iris/policy", {"json": {"schedule": {"cron": 5}}, "headers": admin}),
    ]
    out = []
    for method, path, kwargs in requests:
        response = client.open(path, method=method, **kwargs)
        headers = {k: v for k, v in response.headers.items() if k not in ("Date", "X-Request-ID", "X-Prediction-ID")}
        body = "" if path == "/readyz" else re.sub(r"[0-9a-f]{32}", "<id>", response.get_data(as_text=True))
        out.append({"request": f"{method} {path} {sorted(kwargs)}", "status": response.status_code,
                    "headers": headers, "body": body})
    return out


def run(checkout: Path, root: Path) -> str:
    """This script's ``answers`` with ``checkout``'s packages first on the path."""
    paths = [checkout / "shared", checkout / "services" / "api", checkout / "services" / "trainer", checkout]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, paths))}
    done = subprocess.run([sys.executable, __file__, "--answers", str(root), str(checkout)], env=env,
                          capture_output=True, text=True, timeout=300, check=True)
    return done.stdout


def main() -> int:
    if sys.argv[1:2] == ["--answers"]:
        sys.path.insert(0, sys.argv[3])
        print(json.dumps(answers(Path(sys.argv[2])), indent=1, sort_keys=True))
        return 0
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    other = Path(sys.argv[1]).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, str(HERE))
        setup(Path(tmp))
        theirs, ours = run(other, Path(tmp)), run(HERE, Path(tmp))
    count = len(json.loads(ours))
    if theirs == ours:
        print(f"{count} answers, byte for byte the same as {other}")
        return 0
    sys.stdout.writelines(difflib.unified_diff(theirs.splitlines(True), ours.splitlines(True), str(other), str(HERE)))
    return 1


if __name__ == "__main__":
    sys.exit(main())
