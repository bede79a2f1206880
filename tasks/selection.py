"""The tune stage's output, as the train stage and the report read it (artifacts/tune/<method>/)."""

from __future__ import annotations

from pathlib import Path

from .io import read_json

SELECTION = "selection.json"


def candidate_label(rate: float, init_scale: float | None) -> str:
    """How the tune stage names a candidate: '0.005', or '0.005@init=0.08' with an init scale."""
    return f"{rate:g}" if init_scale is None else f"{rate:g}@init={init_scale:g}"


def selected(tune_dir: str | Path, task: str, per_task: bool = True) -> tuple[float, float | None]:
    """(learning rate, init scale or None) the tune stage selected for a method on `task`: the
    task's own best candidate when it was tuned and `per_task`, else the best mean."""
    selection = read_json(Path(tune_dir) / SELECTION, "learning-rate selection")
    choice = selection.get("per_task", {}).get(task) if per_task else None
    choice = choice or selection
    return choice["learning_rate"], choice.get("init_scale")
