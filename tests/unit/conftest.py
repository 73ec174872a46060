"""Shared by the unit tests."""

from __future__ import annotations

import os

import pytest

from tpotserve.settings import Settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read the environment; a developer's shell must not change these tests."""
    names = {name.lower() for name in Settings.model_fields}
    for key in list(os.environ):
        if key.lower() in names:
            monkeypatch.delenv(key)
