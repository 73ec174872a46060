"""What every request handler needs, built once per process by ``create_app``, and its typed accessor."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from tpotserve.datasets import DatasetStore
from tpotserve.registry import ModelRegistry
from tpotserve.settings import Settings

from .model_pool import ModelPool
from .monitoring import Monitor
from .queue import JobQueue
from .shadow_runner import ShadowRunner

EXTENSION = "tpotserve"


@dataclass
class AppContext:
    """What the resources need, built once per process."""

    settings: Settings
    registry: ModelRegistry
    models: ModelPool
    queue: JobQueue
    datasets: DatasetStore
    monitor: Monitor
    shadows: ShadowRunner


def ctx() -> AppContext:
    """The running app's context (inside a request or an app context)."""
    return current_app.extensions[EXTENSION]
