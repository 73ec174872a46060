"""What every kind of test shares: finding the command-line tools they drive (hadolint,
docker-compose, cloud-init, ...), waiting on a condition (never on a fixed sleep), and a
throwaway Redis for the tests that need one without a whole stack."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from redis.exceptions import RedisError

from native.services import require_binary
from native.stack import free_port


def tool(name: str) -> str:
    """A test tool: beside this interpreter (the venv), else on PATH; missing fails the test."""
    candidates = [Path(sys.executable).parent / name, shutil.which(name), Path("/usr/bin") / name]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.fail(f"{name} is not installed (make setup-dev installs the test tools)")


def wait_for(condition: Callable[[], Any], timeout_s: float, interval_s: float = 0.1, what: str = "") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or condition}")
        time.sleep(interval_s)


@contextmanager
def redis_server(directory: Path, *, unix_socket: Path | None = None) -> Iterator[Redis]:
    """A real redis-server without persistence, working in ``directory``, on a free loopback
    port (or only on ``unix_socket``); yields a client once it answers PING, stops it after."""
    where = ["--port", "0", "--unixsocket", str(unix_socket)] if unix_socket else \
        ["--port", str(free_port()), "--bind", "127.0.0.1"]
    process = subprocess.Popen(
        [require_binary("redis-server"), *where, "--save", "", "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = Redis(unix_socket_path=str(unix_socket)) if unix_socket else Redis(port=int(where[1]))

    def answers() -> bool:
        assert process.poll() is None, f"redis-server exited with {process.returncode}"
        try:
            return bool(client.ping())
        except RedisError:
            return False

    try:
        wait_for(answers, 10, 0.02, "redis-server to answer PING")
        yield client
    finally:
        process.terminate()
        process.wait(timeout=10)
