"""The `evaluate` stage's task: score one method (in every form it is served in) on one task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from zflora.harness.data import get_task
from zflora.harness.evaluate import EvaluateSettings, evaluate_method

from .base import base_model_ref
from .io import read_examples
from .tracking import log_numeric_metrics


@task(name="evaluate-method")
def evaluate(
    task_name: str,
    method: str,
    base_dir: str,
    data_dir: str,
    train_dir: str,
    out_dir: str,
    evaluate: EvaluateSettings,
    dtype: str,
    trust_remote_code: bool,
) -> dict[str, Any]:
    import mlflow

    spec = get_task(task_name)
    examples = read_examples(Path(data_dir) / "test.jsonl")
    result = evaluate_method(
        spec,
        method,
        base_model_ref(base_dir),
        None if method == "base" else train_dir,
        examples,
        out_dir,
        settings=evaluate,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
    )
    log_numeric_metrics(
        {k: v for k, v in result.items() if k not in ("task", "category", "method", "metric")}
    )
    mlflow.log_artifacts(out_dir, artifact_path="evaluation")
    return result
