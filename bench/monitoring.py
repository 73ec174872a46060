"""What watching the served model costs: one-row req/s with drift counting and answer
keeping on (MONITORING=true, the default) vs off, on one product stack.

    .venv/bin/python -m bench.monitoring                  # ~12 minutes: c=1 and c=16, 9 rounds of 10 s
    .venv/bin/python -m bench.monitoring --aa             # the noise floor: "on" is off as well
    .venv/bin/python -m bench.monitoring --rounds 1 --duration 3 --concurrency 1   # a smoke run

One stack (nginx -> Gunicorn -> API, Redis; no trainer) serves a forest whose version has a
reference profile (so "on" really bins every row into it and keeps every answer for
feedback). Before each run the API alone restarts with MONITORING on or off, the order
swapping each round; nginx, Redis, the model and the ports stay the same, so the two
conditions differ in that one setting. The machine's own drift (seen here: +-15 % between
rounds a minute apart) falls on both runs of a round alike, so the figure is the median of
the per-round ratios on/off (the ratio of the medians beside it), with the server's CPU per
request from /proc.
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
from .servers import ProductServer, post, wait_until


class WatchedServer(ProductServer):
    """The product stack; its version carries a drift profile; :meth:`monitoring` restarts its
    API with MONITORING on or off."""

    def __init__(self, work: Path, model: BenchModel) -> None:
        super().__init__(work, model, variant="monitoring")
        self.on: bool | None = None

    def start(self) -> None:
        import bench.servers as servers

        original = servers.publish
        servers.publish = _publish_with_profile
        try:
            super().start()
        finally:
            servers.publish = original
        self.on = True  # MONITORING's default

    def monitoring(self, on: bool) -> None:
        """The API restarted with MONITORING on or off, ready when /predict answers."""
        assert self.stack is not None
        if self.on is on:
            return
        self.stack.stop_service("api")
        self.stack.env["MONITORING"] = "true" if on else "false"
        self.stack.start_service("api")
        probe = json.dumps({f: 1.0 for f in FEATURES}).encode()
        wait_until(lambda: post(self.url, probe, 5)[0] == 200, 120, "tpotserve /predict")
        self.on = on


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
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--duration", type=int, default=10, help="seconds of each wrk run")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of wrk after each API restart, not measured")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--aa", action="store_true", help="A/A: both conditions with monitoring off (noise floor)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    wrk = wrk_binary()
    (model,) = build(["forest"], WORK)
    server = WatchedServer(WORK, model)
    body = WORK / "monitoring-body.json"
    body.write_text(json.dumps({f: v for f, v in zip(FEATURES, (5.9, 3.0, 5.1, 1.8))}))
    runs: list[dict[str, Any]] = []
    drift = None
    try:
        server.start()
        for connections in args.concurrency:
            scenario = Scenario(f"1 row, c={connections}", 1, connections)
            for round_ in range(args.rounds):
                order = (True, False) if round_ % 2 == 0 else (False, True)
                for on in order:
                    server.monitoring(on and not args.aa)
                    measure(wrk, server, body, scenario, args.warmup)  # a fresh worker's first requests
                    figures = measure(wrk, server, body, scenario, args.duration)
                    runs.append({"monitoring": on, "connections": connections, "round": round_, **figures})
                    print(f"c={connections:<3} round {round_}  monitoring {'on ' if on else 'off'}  "
                          f"{figures['req_s']:8.1f} req/s  p50 {figures['p50_ms']:.2f} ms  "
                          f"CPU {figures['cpu_ms_per_req']:.3f} ms/req  errors {figures['errors']}", flush=True)
                    if on and not args.aa:
                        drift = _drift_rows(server)
    finally:
        server.stop()
    summary = [_summary(runs, connections) for connections in args.concurrency]
    result = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count(),
              "rounds": args.rounds, "duration_s": args.duration, "aa": args.aa, "summary": summary,
              "rows_counted_by_the_on_stack": drift, "runs": runs}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / ("monitoring-aa.json" if args.aa else "monitoring.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    label = "A/A: both off" if args.aa else "monitoring on"
    print(f"| one-row requests | {label} (req/s) | off (req/s) | on / off, median of rounds | "
          "on / off of the medians | CPU per request on / off |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in summary:
        print(f"| c={row['connections']} | {row['on_req_s']:.0f} | {row['off_req_s']:.0f} | "
              f"{row['ratio_on_off_paired']:.3f} | {row['ratio_on_off']:.3f} | "
              f"{row['on_cpu_ms_per_req']:.3f} / {row['off_cpu_ms_per_req']:.3f} ms |")
    print(f"\nrows the 'on' stack counted into its drift bins: {drift}; results in {out}")
    return 0


def _summary(runs: list[dict[str, Any]], connections: int) -> dict[str, Any]:
    mine = [r for r in runs if r["connections"] == connections]
    by_round = {(r["round"], r["monitoring"]): r for r in mine}
    paired = [by_round[(i, True)]["req_s"] / by_round[(i, False)]["req_s"]
              for i in sorted({r["round"] for r in mine}) if (i, True) in by_round and (i, False) in by_round]
    medians = {on: statistics.median(r["req_s"] for r in mine if r["monitoring"] is on) for on in (True, False)}
    cpu = {on: statistics.median(r["cpu_ms_per_req"] for r in mine if r["monitoring"] is on) for on in (True, False)}
    return {"connections": connections, "on_req_s": medians[True], "off_req_s": medians[False],
            "ratio_on_off": round(medians[True] / medians[False], 4),
            "ratio_on_off_paired": round(statistics.median(paired), 4),
            "paired_ratios": [round(x, 4) for x in paired],
            "on_cpu_ms_per_req": cpu[True], "off_cpu_ms_per_req": cpu[False]}


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
