"""Where every stage reads and writes (paths relative to the project root; dvc.yaml mirrors them)."""

from __future__ import annotations

from pathlib import Path

ARTIFACTS = Path("artifacts")
BASE = ARTIFACTS / "base"
PROFILE = ARTIFACTS / "profile"
REPORTS = Path("reports")
METRICS = Path("metrics")
WORK = Path("work")  # training checkpoints: not a DVC output, so a killed stage can resume


def data_dir(task: str) -> Path:
    return ARTIFACTS / "data" / task


def train_dir(task: str, method: str) -> Path:
    return ARTIFACTS / "train" / task / method


def checkpoint_dir(task: str, method: str) -> Path:
    return WORK / "checkpoints" / task / method


def fused_dir(task: str) -> Path:
    return ARTIFACTS / "fused" / task


def eval_dir(task: str, method: str) -> Path:
    return ARTIFACTS / "eval" / task / method
