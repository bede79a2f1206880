"""The `evaluate` stage's task: score one method (in every form it is served in) on one task,
and the runs of its other seeds (in their headline form)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from zflora.harness.data.suite import get_task
from zflora.harness.evaluate import evaluate_method
from zflora.harness.settings import EvaluateSettings

from .io import base_model_ref, read_examples, read_json, write_json
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
    other_seeds: dict[int, tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """metrics.json of the first seed's model in every form; with `other_seeds` ({seed:
    (train dir, eval dir)}) also each other seed's score, and the mean and range over all."""
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
    if other_seeds:
        manifest = Path(train_dir) / "method.json"
        first = read_json(manifest).get("seed", 0) if manifest.is_file() else 0
        scores = {str(first): result["score"]}
        for seed, (seed_train, seed_out) in other_seeds.items():
            scores[str(seed)] = evaluate_method(
                spec,
                method,
                base_model_ref(base_dir),
                seed_train,
                examples,
                seed_out,
                settings=evaluate,
                dtype=dtype,
                trust_remote_code=trust_remote_code,
                all_forms=False,
            )["score"]
        values = list(scores.values())
        result["seeds"] = scores
        result["score_mean"] = sum(values) / len(values)
        result["score_min"], result["score_max"] = min(values), max(values)
        write_json(Path(out_dir) / "metrics.json", result)
    log_numeric_metrics(
        {k: v for k, v in result.items() if k not in ("task", "category", "method", "metric")}
    )
    mlflow.log_artifacts(out_dir, artifact_path="evaluation")
    return result
