"""The `tune` stage's task: select one method's learning rate on the validation splits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from zflora.harness.settings import AdapterSettings, EvaluateSettings, TrainSettings
from zflora.method.atomic import atomic_dir

from .io import base_model_ref, read_examples, write_json
from .selection import SELECTION
from .tracking import log_json_artifact, log_numeric_metrics


@task(name="tune-learning-rate")
def tune(
    method: str,
    candidates: list[float],
    base_dir: str,
    data_dirs: dict[str, str],
    out_dir: str,
    work_dir: str,
    train: TrainSettings,
    adapter: AdapterSettings,
    evaluate: EvaluateSettings,
    dtype: str,
    trust_remote_code: bool,
    init_scales: list[float] | None = None,
    jobs: int = 1,
) -> dict[str, Any]:
    """Write out_dir/selection.json: the selected learning rate (and init scale), overall and per
    task, and every candidate's validation scores."""
    from zflora.harness.tune import select_learning_rate

    data = {
        name: (read_examples(Path(d) / "train.jsonl"), read_examples(Path(d) / "validation.jsonl"))
        for name, d in data_dirs.items()
    }
    with atomic_dir(out_dir) as tmp:
        # the chosen candidates' runs are kept: the train stage's first seed is one of them
        selection = select_learning_rate(
            base_model_ref(base_dir),
            method,
            candidates,
            data,
            settings=train,
            adapter=adapter,
            evaluate=evaluate,
            work_dir=work_dir,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            init_scales=init_scales,
            keep_dir=tmp,
            jobs=jobs,
        )
        selection["tasks"] = list(data_dirs)
        write_json(tmp / SELECTION, selection)
    log_numeric_metrics({"learning_rate": selection["learning_rate"], "tuned": selection["tuned"]})
    for label, scores in selection.get("scores", {}).items():
        if scores.get("mean") is not None:  # one metric per candidate: validation_mean_lr_0.005
            import mlflow

            mlflow.log_metric(f"validation_mean_lr_{label.replace('@init=', '_init_')}", scores["mean"])
    log_json_artifact(selection, SELECTION)
    return selection
