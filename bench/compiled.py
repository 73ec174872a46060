"""Compiled inference end to end through nginx: before (the pipeline's own path) vs after (the
verified ONNX engine where it is the faster), on the same stack, per pipeline (issue 22).

    .venv/bin/python -m bench.compiled                       # every model, 3 rounds, ~15 minutes
    .venv/bin/python -m bench.compiled --models rbf-lr --duration 5 --repeats 1   # a quick look

Each model is compiled as the trainer compiles it (``tpotserve_trainer.compiler``) and written into
two identical product stacks (nginx -> Gunicorn, 2 sync workers, the product's configuration):
``before`` runs with COMPILED_INFERENCE=false, which serves exactly as releases before compiled
inference did, and ``after`` with the default. The two run alternately, the order swapped every
round: one-row requests from 16 connections, then 10,000-row batches one at a time. req/s,
p50/p99 and the server's CPU per request (Gunicorn workers + nginx, /proc) are medians over rounds.

The models are pipelines from TPOT 1.1's default search space fitted here on shipped data (iris):
XGBoost(100), FastICA -> MLP, RBFSampler -> LogisticRegression, StandardScaler -> RandomForest(100),
AdaBoost(300), and the trainer's own iris pipeline (``tpot``: ``tpotserve_trainer.jobs.retrain``
on iris, seeded, trained once into ``bench/.work/tpot-store`` as ``bench.run`` does).
``--from-runs``: instead, TPOT's own pipelines of each kind, from real searches (bench.tpot_runs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import joblib

from tpotserve.clock import utc_iso
from tpotserve.model_meta import ModelMeta

from . import tpot_runs
from .models import FEATURES, BenchModel, iris_xy, tpot_model
from .run import Scenario, measure, wrk_binary
from .micro import batch_rows
from .servers import ProductServer

WORK = Path(__file__).resolve().parent / ".work"
RESULTS = Path(__file__).resolve().parent / "results"


def pipelines() -> dict[str, Any]:
    from sklearn.decomposition import FastICA
    from sklearn.ensemble import AdaBoostClassifier, RandomForestClassifier
    from sklearn.kernel_approximation import RBFSampler
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from xgboost import XGBClassifier

    return {
        "xgboost": lambda: make_pipeline(XGBClassifier(n_estimators=100, n_jobs=1)),
        "ica-mlp": lambda: make_pipeline(FastICA(random_state=0),
                                         MLPClassifier((436, 436, 436), max_iter=300, random_state=0)),
        "rbf-lr": lambda: make_pipeline(RBFSampler(random_state=0), LogisticRegression(max_iter=1000)),
        "forest": lambda: make_pipeline(StandardScaler(), RandomForestClassifier(100, random_state=0)),
        "adaboost": lambda: make_pipeline(AdaBoostClassifier(n_estimators=300, random_state=0)),
    }


def fitted_model(name: str, work: Path) -> BenchModel:
    if name == "tpot":
        return tpot_model(work, work / "logs" / "tpot-train.log")
    from sklearn.base import clone

    from tpotserve.schema import feature_schema

    X, y = iris_xy()
    if name in tpot_runs.KINDS:  # TPOT's own, from a real search (bench.tpot_runs)
        found = tpot_runs.collect().get(name)
        if found is None:
            raise SystemExit(f"{name}: the searches of bench.tpot_runs scored no pipeline of this kind")
        pipeline = clone(found["pipeline"])
    else:
        pipeline = pipelines()[name]()
    pipeline.fit(X.to_numpy(dtype=float), y.astype("category").cat.codes.to_numpy())
    classes = [str(c) for c in y.astype("category").cat.categories]
    directory = work / "models" / f"compiled-{name}"
    directory.mkdir(parents=True, exist_ok=True)
    artifact = directory / "model.joblib"
    joblib.dump(pipeline, artifact)
    meta = ModelMeta(created_at=utc_iso(), task="classification", dataset="iris", target="species",
                     features=feature_schema(X), classes=classes, label_encoded=True, pipeline=str(pipeline),
                     reason="benchmark").to_json()
    return BenchModel(name, artifact, meta, str(pipeline))


class CompiledProduct(ProductServer):
    """The product with the model's compiled form written into its store, as a training does."""

    def __init__(self, work: Path, model: BenchModel, compiled: bool) -> None:
        super().__init__(work, model, env={"COMPILED_INFERENCE": "true" if compiled else "false"},
                         variant="after" if compiled else "before")

    def start(self) -> None:
        import hashlib
        import shutil

        from tpotserve.registry import ModelRegistry
        from tpotserve.store import new_version_id
        from tpotserve_trainer.compiler import compile_pipeline

        from native.stack import NativeStack, free_port

        from .servers import post, wait_until

        data_dir = self.data_dir()
        shutil.rmtree(data_dir, ignore_errors=True)
        self.stack = NativeStack(data_dir=data_dir, gateway_port=free_port(), env=dict(self.env))
        store = ModelRegistry(self.stack.model_dir, self.stack.signing_key().encode(), "iris").store()
        meta = {k: v for k, v in self.model.meta.items() if k not in ("compiled", "files")}
        raw, record = compile_pipeline(self.model.load(), ModelMeta.from_json(meta, "bench"))
        documents = {}
        if raw is not None:
            record.update(sha256=hashlib.sha256(raw).hexdigest(), signature=store.sign(raw))
            documents["model.onnx"] = raw
        self.compiled_record = record
        self.version = new_version_id()
        store.write_version(self.version, lambda path: shutil.copyfile(self.model.artifact, path),
                            {**meta, "compiled": record}, documents)
        store.set_current(self.version)
        self.stack.start(services=("redis", "api", "nginx"))
        probe = json.dumps({f: 1.0 for f in FEATURES}).encode()
        wait_until(lambda: post(f"{self.stack.gateway_url}/predict", probe, 5)[0] == 200, 120, "tpotserve /predict")

    def serving(self) -> dict[str, Any]:
        import requests

        return requests.get(f"{self.stack.gateway_url}/models/current", timeout=10).json().get("serving", {})


def run_model(name: str, args: argparse.Namespace, wrk: str) -> dict[str, Any]:
    model = fitted_model(name, WORK)
    servers = [CompiledProduct(WORK, model, compiled=False), CompiledProduct(WORK, model, compiled=True)]
    plan = [Scenario("1 row, c=16", 1, 16), Scenario(f"{args.batch} rows, c=1", args.batch, 1)]
    bodies = {}
    directory = WORK / "bodies" / f"compiled-{name}"
    directory.mkdir(parents=True, exist_ok=True)
    for scenario in plan:
        path = directory / f"{scenario.rows}.json"
        path.write_bytes(servers[0].encode(batch_rows(scenario.rows, seed=1)))
        bodies[scenario.rows] = path
    runs: list[dict[str, Any]] = []
    try:
        for server in servers:
            server.start()
        serving = servers[1].serving()
        print(f"[{name}] after: {serving.get('engine')} {serving.get('reason') or serving.get('compiled', {})}",
              flush=True)
        for scenario in plan:
            for server in servers:  # warm-up
                measure(wrk, server, bodies[scenario.rows], scenario, 2)
            for round_ in range(args.repeats):
                order = servers if round_ % 2 == 0 else servers[::-1]
                for server in order:
                    result = measure(wrk, server, bodies[scenario.rows], scenario, args.duration)
                    runs.append({"model": name, "server": server.variant, "scenario": scenario.name,
                                 "round": round_, **result})
                    print(f"[{name} | {scenario.name} | {server.variant}] {result['req_s']} req/s, "
                          f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
                          f"{result['cpu_ms_per_req']} CPU ms/req, errors {result['errors']}, "
                          f"load {result['loadavg_1m_before']}", flush=True)
    finally:
        for server in servers:
            server.stop()
    return {"model": name, "pipeline": model.description, "serving_after": serving,
            "compiled": servers[1].compiled_record if hasattr(servers[1], "compiled_record") else None, "runs": runs}


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for result in results:
        for scenario in sorted({run["scenario"] for run in result["runs"]}, key=lambda s: int(s.split()[0])):
            size = int(scenario.split()[0])
            max_rows = (result["serving_after"].get("compiled") or {}).get("max_rows") or 0
            engine = "onnxruntime" if result["serving_after"].get("engine") == "onnxruntime" and size <= max_rows \
                else "scikit-learn"
            cell: dict[str, Any] = {"model": result["model"], "scenario": scenario, "engine_after": engine,
                                    "max_rows": max_rows}
            for side in ("before", "after"):
                mine = [r for r in result["runs"] if r["scenario"] == scenario and r["server"] == side]
                for key in ("req_s", "p50_ms", "p99_ms", "cpu_ms_per_req"):
                    values = [r[key] for r in mine if r[key] is not None]
                    cell[f"{side}_{key}"] = round(statistics.median(values), 3) if values else None
                cell[f"{side}_errors"] = sum(r["errors"] for r in mine)
            if cell["before_req_s"]:
                cell["after_over_before"] = round(cell["after_req_s"] / cell["before_req_s"], 2)
            rows.append(cell)
    return rows


def markdown(summary: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"# Compiled inference, before vs after ({meta['at']})", "",
             f"Machine: {meta['cpus']} CPUs, load average {meta['loadavg_start']} at the start, "
             f"{meta['loadavg_end']} at the end (shared machine). {meta['repeats']} rounds of "
             f"{meta['duration_s']} s, alternating; medians.", "",
             "| model | scenario | engine after | req/s before | req/s after | after/before | p50 ms after | "
             "p99 ms after | p99/p50 after | CPU ms/req before | CPU ms/req after |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in summary:
        ratio = (row["after_p99_ms"] / row["after_p50_ms"]) if row.get("after_p50_ms") else None
        lines.append(
            f"| {row['model']} | {row['scenario']} | {row['engine_after']} | {row['before_req_s']} | "
            f"{row['after_req_s']} | {row.get('after_over_before')} | {row['after_p50_ms']} | {row['after_p99_ms']} | "
            f"{ratio:.2f} | {row['before_cpu_ms_per_req']} | {row['after_cpu_ms_per_req']} |"
            if ratio is not None else f"| {row['model']} | {row['scenario']} | - | - | - | - | - | - | - | - | - |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["xgboost", "ica-mlp", "rbf-lr", "forest", "adaboost", "tpot"])
    parser.add_argument("--from-runs", action="store_true",
                        help="TPOT's own pipelines from real searches on iris (bench.tpot_runs) and the trainer's")
    parser.add_argument("--duration", type=int, default=10, help="seconds per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--label", default="compiled")
    parser.add_argument("--render", type=Path, help="only write the .md of an earlier run's .json again")
    args = parser.parse_args(argv)
    if args.render:
        out = json.loads(args.render.read_text())
        out["summary"] = summarize(out["results"])
        args.render.write_text(json.dumps(out, indent=2) + "\n")
        text = markdown(out["summary"], out["meta"])
        args.render.with_suffix(".md").write_text(text)
        print(text)
        return 0
    WORK.mkdir(parents=True, exist_ok=True)
    if args.from_runs:
        args.models = [*tpot_runs.KINDS, "tpot"]
    wrk = wrk_binary()
    meta = {"at": utc_iso(), "cpus": os.cpu_count(), "loadavg_start": [round(v, 2) for v in os.getloadavg()],
            "repeats": args.repeats, "duration_s": args.duration, "batch_rows": args.batch}
    results = []
    for name in args.models:
        results.append(run_model(name, args, wrk))
    meta["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    summary = summarize(results)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    RESULTS.mkdir(exist_ok=True)
    out = {"meta": meta, "summary": summary, "results": results}
    (RESULTS / f"{stamp}-{args.label}.json").write_text(json.dumps(out, indent=2) + "\n")
    text = markdown(summary, meta)
    (RESULTS / f"{stamp}-{args.label}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
