"""A small, valid training payload for the trainer's unit tests."""

from __future__ import annotations

from typing import Any

from tpotserve.schema import TrainingPayload


def training_payload(**overrides: Any) -> TrainingPayload:
    values: dict[str, Any] = {
        "dataset": "iris", "target": "species", "task": "classification", "max_time_mins": 1.0,
        "generations": 2, "population_size": 4, "cv": 5, "scoring": "accuracy", "n_jobs": 1,
    }
    values.update(overrides)
    return TrainingPayload(**values)
