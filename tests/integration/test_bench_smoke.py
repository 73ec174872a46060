"""The benchmark keeps working: `python -m bench.run --smoke` once, in a few seconds.

Not a timed test: the numbers of a smoke run on a busy machine mean nothing. It
checks that the whole tool runs end to end (models, the native stack through
nginx, the book-style baseline, wrk, the CPU accounting, the JSON and markdown
reports) and that the product answered every request.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from native.stack import REPO


def test_bench_smoke_run_reports_the_product_without_errors(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--smoke",
            "--results-dir",
            str(tmp_path / "results"),
            "--work-dir",
            str(tmp_path / "work"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, f"bench failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    (result_path,) = (tmp_path / "results").glob("*-smoke.json")
    assert result_path.with_suffix(".md").is_file()
    result = json.loads(result_path.read_text())
    assert result["settings"]["smoke"] is True
    assert result["servers"]["mlserver"]["skipped"] == "smoke mode"
    product = [run for run in result["runs"] if run["server"] == "product"]
    book = [run for run in result["runs"] if run["server"] == "book"]
    assert product and book
    for run in product:
        assert run["req_s"] > 0, run
        assert run["errors"] == 0, run
        assert run["cpu_ms_per_req"] and run["cpu_ms_per_req"] > 0, run
        assert set(run["cpu_ms_per_req_by_process"]) >= {"gunicorn", "nginx"}, run
    assert {run["rows_per_request"] for run in product} == {1, 1000}
    summary = [row for row in result["summary"] if row["server"] == "product"]
    assert all(row["vs_book"] for row in summary), summary
