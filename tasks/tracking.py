"""MLflow tracking for pipeline stages: one run per stage, tagged, marked FAILED when it fails.

Default store: `sqlite:///mlflow.db` in the project root with artifacts under
`mlartifacts/`; MLFLOW_TRACKING_URI points the pipeline at a team server instead.
Browse it with `mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"


def is_main_process() -> bool:
    """False on the non-zero ranks of a torchrun / accelerate launch: only rank 0 logs."""
    return int(os.environ.get("RANK", "0")) == 0


def project_root() -> Path:
    """Where the MLflow store lives: the workspace DVC runs the stage for (DVC_ROOT: for a
    queued experiment, the workspace of the queue, not DVC's temporary copy), else here."""
    return Path(os.environ.get("ZFLORA_PROJECT_ROOT") or os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / DEFAULT_DB}"


def setup_mlflow(experiment: str) -> str:
    """Point MLflow at the project's store and make sure the experiment exists; returns its id.

    The sqlite store's schema is created by the first stage that logs. Experiments queued
    with `dvc exp run --queue --jobs N` start their first stages at once into one store, so
    creating it is serialised with a lock file next to it (else: "table params already exists").
    """
    import mlflow

    uri = tracking_uri()
    with _store_lock(uri):
        mlflow.set_tracking_uri(uri)
        found = mlflow.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            location = None
            if uri.startswith("sqlite:"):
                location = (project_root() / DEFAULT_ARTIFACTS).as_uri()
            try:
                experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
            except Exception:  # another process created it first
                experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock on `<db>.lock` for a local sqlite store; nothing for a server."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    lock_path = Path(uri.removeprefix("sqlite:///") + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def git_commit() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=project_root()
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=project_root(),
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if sha.returncode != 0:
        return "unknown"
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become JSON strings (MLflow params are flat strings)."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    value = json.dumps(data) if isinstance(data, (list, tuple)) else data
    return {prefix.rstrip("."): value}


@contextlib.contextmanager
def stage_run(
    stage: str, experiment: str, params: dict[str, Any], tags: dict[str, str] | None = None
) -> Iterator[Any]:
    """An MLflow run for one stage: params logged, tags set; FAILED if the block raises."""
    if not is_main_process():
        yield None
        return
    import mlflow

    setup_mlflow(experiment)
    all_tags = {
        "dvc_stage": os.environ.get("DVC_STAGE", stage),
        "stage": stage,
        "git_commit": git_commit(),
        **(tags or {}),
    }
    if os.environ.get("DVC_EXP_NAME"):
        all_tags["dvc_experiment"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("ZFLORA_WORKER_NAME"):  # a work pool's worker ran it (flows/pool.py)
        all_tags["worker"] = os.environ["ZFLORA_WORKER_NAME"]
    run_name = all_tags["dvc_stage"]
    with mlflow.start_run(run_name=run_name, tags=all_tags) as run:
        flat = flatten(params)
        for start in range(0, len(flat), 100):  # MLflow caps a batch at 100 params
            mlflow.log_params(dict(list(flat.items())[start : start + 100]))
        yield run


def log_json_artifact(data: Any, name: str, artifact_path: str | None = None) -> None:
    if not is_main_process():
        return
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(json.dumps(data, indent=2, default=str))
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_numeric_metrics(metrics: dict[str, Any], prefix: str = "") -> None:
    """Log every finite number in a (nested) dict as an MLflow metric."""
    import math

    import mlflow

    if not is_main_process():
        return
    flat = {f"{prefix}{k}": v for k, v in flatten(metrics).items()}
    numeric = {
        k.replace("@", "_"): float(v)
        for k, v in flat.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }
    if numeric:
        mlflow.log_metrics(numeric)
