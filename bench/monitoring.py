"""What watching the served model costs: one-row req/s with drift counting and answer
keeping on (MONITORING=true, the default) vs off, on two otherwise identical product stacks.

    .venv/bin/python -m bench.monitoring                  # ~4 minutes: c=1 and c=16, 5 rounds of 15 s
    .venv/bin/python -m bench.monitoring --rounds 1 --duration 3 --concurrency 1   # a smoke run

Both stacks (nginx -> Gunicorn -> API, Redis; no trainer) serve the same forest from the same
joblib file, its version with a reference profile (so "on" really bins every row into it and
keeps every answer for feedback). They run side by side and are measured alternately, the
order swapping each round, so a drift of the machine falls on both; the figures are medians
over rounds and the ratio is on/off of those medians.
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

import pandas as pd

from .micro import WORK
from .models import FEATURES, BenchModel, build, iris_xy
from .run import RESULTS, Scenario, measure, wrk_binary
from .servers import ProductServer


class WatchedServer(ProductServer):
    """The product stack with MONITORING on or off; its version carries a drift profile."""

    def __init__(self, work: Path, model: BenchModel, monitoring: bool) -> None:
        super().__init__(work, model, env={"MONITORING": "true" if monitoring else "false"},
                         variant="monitoring-on" if monitoring else "monitoring-off")

    def start(self) -> None:
        import bench.servers as servers

        original = servers.publish
        servers.publish = _publish_with_profile
        try:
            super().start()
        finally:
            servers.publish = original


def _publish_with_profile(store: Any, bench_model: BenchModel) -> str:
    import shutil

    from tpotserve.drift import PROFILE_NAME, reference_profile
    from tpotserve.store import new_version_id

    X, y = iris_xy()
    profile = reference_profile(pd.DataFrame(X, columns=FEATURES), y, "classification")
    version = new_version_id()
    store.write_version(version, lambda path: shutil.copyfile(bench_model.artifact, path), dict(bench_model.meta),
                        {PROFILE_NAME: json.dumps(profile).encode()})
    store.set_current(version)
    return version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=15, help="seconds of each wrk run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    wrk = wrk_binary()
    (model,) = build(["forest"], WORK)
    servers = {True: WatchedServer(WORK, model, True), False: WatchedServer(WORK, model, False)}
    body = WORK / "monitoring-body.json"
    body.write_text(json.dumps({f: v for f, v in zip(FEATURES, (5.9, 3.0, 5.1, 1.8))}))
    runs: list[dict[str, Any]] = []
    try:
        for server in servers.values():
            server.start()
        for connections in args.concurrency:
            scenario = Scenario(f"1 row, c={connections}", 1, connections)
            measure(wrk, servers[True], body, scenario, 3)  # warm-up, both
            measure(wrk, servers[False], body, scenario, 3)
            for round_ in range(args.rounds):
                order = (True, False) if round_ % 2 == 0 else (False, True)
                for on in order:
                    figures = measure(wrk, servers[on], body, scenario, args.duration)
                    runs.append({"monitoring": on, "connections": connections, "round": round_, **figures})
                    print(f"c={connections:<3} round {round_}  monitoring {'on ' if on else 'off'}  "
                          f"{figures['req_s']:8.1f} req/s  p50 {figures['p50_ms']:.2f} ms  "
                          f"errors {figures['errors']}", flush=True)
        drift = _drift_rows(servers[True])
    finally:
        for server in servers.values():
            server.stop()
    summary = []
    for connections in args.concurrency:
        medians = {on: statistics.median(r["req_s"] for r in runs if r["monitoring"] is on
                                         and r["connections"] == connections) for on in (True, False)}
        summary.append({"connections": connections, "on_req_s": medians[True], "off_req_s": medians[False],
                        "ratio_on_off": round(medians[True] / medians[False], 4)})
    result = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count(),
              "rounds": args.rounds, "duration_s": args.duration, "summary": summary,
              "rows_counted_by_the_on_stack": drift, "runs": runs}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / "monitoring.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print("| one-row requests | monitoring on (req/s) | off (req/s) | on / off |")
    print("|---|---:|---:|---:|")
    for row in summary:
        print(f"| c={row['connections']} | {row['on_req_s']:.0f} | {row['off_req_s']:.0f} | {row['ratio_on_off']:.3f} |")
    print(f"\nrows the 'on' stack counted into its drift bins: {drift}; results in {out}")
    return 0


def _drift_rows(server: WatchedServer) -> int | None:
    """Proof that "on" counted: the drift endpoint's row count over the last hour."""
    import urllib.request

    assert server.stack is not None
    deadline = time.monotonic() + 10
    rows = None
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{server.stack.gateway_url}/drift", timeout=10) as answer:
            rows = json.loads(answer.read())["rows"]
        if rows:
            return rows
        time.sleep(0.5)  # the counts flush every MONITORING_FLUSH_S (2 s)
    return rows


if __name__ == "__main__":
    sys.exit(main())
