"""Finding the command-line tools the tests drive (hadolint, docker-compose, cloud-init, ...)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest


def tool(name: str) -> str:
    """A test tool: beside this interpreter (the venv), else on PATH; missing fails the test."""
    candidates = [Path(sys.executable).parent / name, shutil.which(name), Path("/usr/bin") / name]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.fail(f"{name} is not installed (make setup-dev installs the test tools)")
