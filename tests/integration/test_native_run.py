"""`make run`'s launcher as a user runs it: foreground, and every process gone after SIGTERM/Ctrl-C."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import requests

from native.proc import alive, descendants
from native.stack import free_port

from .conftest import start_launcher, wait_for


@pytest.mark.parametrize(
    ("sig", "times"), [(signal.SIGTERM, 1), (signal.SIGINT, 1), (signal.SIGTERM, 200)],
    ids=["SIGTERM", "Ctrl-C", "SIGTERM-burst"],
)
def test_native_run_serves_and_stops_everything_it_started(tmp_path: Path, sig: int, times: int) -> None:
    """A burst of signals must stop it too. `kill -TERM -<pgid>` of `make run` once left the launcher
    deadlocked, every service still running: py-spy showed the handler re-entered inside its own
    Event.set(). That timing is not reproducible on demand (this burst passed against the old
    handler too); the handler now only appends, so no signal can land inside a lock."""
    port = free_port()
    env = {
        **os.environ,
        "DATA_DIR": str(tmp_path / "data"),
        "GATEWAY_PORT": str(port),
        "API_KEY": "k",
        "BOOTSTRAP_ON_START": "false",  # lifecycle only; training is covered by the session stack
    }
    launcher = start_launcher(env)
    try:
        lines: list[str] = []

        def ready() -> bool:
            line = launcher.stdout.readline()
            lines.append(line)
            assert line or launcher.poll() is None, "".join(lines)
            return line.startswith("ready:")

        wait_for(ready, timeout_s=120, interval_s=0, what="the launcher's ready line")
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        started = descendants(launcher.pid)
        assert len(started) >= 5, started  # redis, two workers, gunicorn (+ its workers), nginx
        assert (tmp_path / "data" / "logs" / "api.log").exists()

        for _ in range(times):
            launcher.send_signal(sig)
            if times > 1:
                time.sleep(0.0005)  # pacing only: signals spread over the handler's first steps
        assert launcher.wait(timeout=60) == 0
        wait_for(lambda: not any(alive(pid) for pid in started), timeout_s=10, what="every child gone")
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
