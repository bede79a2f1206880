"""The tune stage's output, as the train stage and the report read it (artifacts/tune/<method>/)."""

from __future__ import annotations

from pathlib import Path

from .io import read_json

SELECTION = "selection.json"


def selected_learning_rate(tune_dir: str | Path) -> float:
    """The learning rate the tune stage selected for a method."""
    return read_json(Path(tune_dir) / SELECTION, "learning-rate selection")["learning_rate"]
