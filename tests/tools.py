"""What every kind of test shares: finding the command-line tools they drive (hadolint,
docker-compose, cloud-init, ...) and waiting on a condition (never on a fixed sleep)."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


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
