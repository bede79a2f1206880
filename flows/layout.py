"""Where every stage reads and writes (paths relative to the project root; dvc.yaml mirrors them)."""

from __future__ import annotations

from pathlib import Path

# the stage modules (flows/<stage>.py, run by `python -m flows <stage>`), in pipeline order
STAGES = ("base", "prepare", "tune", "train", "fuse", "evaluate", "profile", "report")

ARTIFACTS = Path("artifacts")
BASE = ARTIFACTS / "base"
PROFILE = ARTIFACTS / "profile"
REPORTS = Path("reports")
METRICS = Path("metrics")
WORK = Path("work")  # training checkpoints: not a DVC output, so a killed stage can resume
SEEDS = "seeds"  # sub-folder of a train / eval folder holding the runs of the other seeds


def data_dir(task: str) -> Path:
    return ARTIFACTS / "data" / task


def tune_dir(method: str) -> Path:
    return ARTIFACTS / "tune" / method


def train_dir(task: str, method: str, extra_seed: int | None = None) -> Path:
    """The first seed's model at the method's folder (what fuse and the registry use); another
    seed's (`extra_seed`) in its seeds/<seed>/ sub-folder."""
    root = ARTIFACTS / "train" / task / method
    return root if extra_seed is None else root / SEEDS / str(extra_seed)


def checkpoint_dir(task: str, method: str, extra_seed: int | None = None) -> Path:
    root = WORK / "checkpoints" / task / method
    return root if extra_seed is None else root.with_name(f"{method}-seed-{extra_seed}")


def fused_dir(task: str) -> Path:
    return ARTIFACTS / "fused" / task


def eval_dir(task: str, method: str) -> Path:
    return ARTIFACTS / "eval" / task / method


def extra_seeds(train_root: Path) -> list[int]:
    """Seeds of the other runs stored under a method's train folder (seeds/<seed>/), in order."""
    folder = train_root / SEEDS
    return (
        sorted(int(p.name) for p in folder.iterdir() if p.name.lstrip("-").isdigit())
        if folder.is_dir()
        else []
    )
