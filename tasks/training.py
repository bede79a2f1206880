"""The `train` stage's task: fine-tune one method on one task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from zflora.harness.settings import AdapterSettings, TrainSettings

from .io import base_model_ref, read_examples, read_json, write_json
from .tracking import log_json_artifact, log_numeric_metrics

MANIFEST = "method.json"


@task(name="train-method")
def train(
    task_name: str,
    method: str,
    base_dir: str,
    data_dir: str,
    out_dir: str,
    work_dir: str,
    train: TrainSettings,
    adapter: AdapterSettings,
    dtype: str,
    trust_remote_code: bool,
    label: str = "",
    reuse: str | None = None,
) -> dict[str, Any]:
    """Train `method` on the task's train.jsonl; out_dir gets the adapter / weights and method.json.

    `label` (e.g. 'seed-1') keeps another run in the same MLflow run apart: its metrics are
    logged as '<label>/<name>' and its adapter under 'adapter/<label>'.
    """
    prefix = f"{label}/" if label else ""
    import mlflow

    base_manifest = read_json(Path(base_dir) / "base.json", "base model manifest")
    from zflora.harness.train import train_method

    examples = read_examples(Path(data_dir) / "train.jsonl")
    metrics = train_method(
        base_model_ref(base_dir),
        examples,
        out_dir,
        method,
        settings=train,
        adapter=adapter,
        dtype=dtype,
        work_dir=work_dir,
        trust_remote_code=trust_remote_code,
        reuse=reuse,
    )
    curve = metrics.pop("loss_curve")
    if not metrics.pop("is_main_process"):  # DDP: the main process saves and logs
        return {**metrics, "task": task_name}
    for step, loss in curve:
        mlflow.log_metric(f"{prefix}train_loss", loss, step=int(step))
    summary = {
        **metrics,
        "task": task_name,
        "base": base_manifest["name"],
        "base_fingerprint": base_manifest["fingerprint"],
    }
    write_json(Path(out_dir) / MANIFEST, summary)
    summary["loss_curve"] = [{"step": s, "loss": v} for s, v in curve]
    log_numeric_metrics(
        {k: v for k, v in summary.items() if k not in ("base_fingerprint", "loss_curve")}, prefix
    )
    log_json_artifact(summary, MANIFEST, artifact_path=label or None)
    if method != "fft":  # adapters are small; full fft weights stay in DVC's cache only
        mlflow.log_artifacts(out_dir, artifact_path=f"adapter/{label}" if label else "adapter")
    return summary
