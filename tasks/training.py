"""The `train` stage's task: fine-tune one method on one task; `base` records that it trains nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from zflora.method.atomic import atomic_dir

from .base import base_model_ref
from .io import read_examples, read_json, write_json
from .tracking import is_main_process, log_json_artifact, log_numeric_metrics

MANIFEST = "method.json"
TRAIN_FIELDS = (
    "epochs",
    "max_steps",
    "batch_size",
    "grad_accum",
    "max_seq_len",
    "warmup_ratio",
    "weight_decay",
    "lr_scheduler",
    "seed",
    "save_steps",
    "logging_steps",
    "gradient_checkpointing",
)


def train_settings(
    method: str, train_params: dict[str, Any], adapter_params: dict[str, Any], dtype: str
) -> Any:
    from zflora.harness.train import TrainSettings

    return TrainSettings(
        method=method,
        r=adapter_params["r"],
        lora_alpha=adapter_params.get("lora_alpha"),
        learning_rate=train_params.get("learning_rates", {}).get(method),
        dtype="bfloat16" if dtype == "bfloat16" else "float32",
        **{key: train_params[key] for key in TRAIN_FIELDS},
    )


@task(name="train-method")
def train(
    task_name: str,
    method: str,
    base_dir: str,
    data_dir: str,
    out_dir: str,
    work_dir: str,
    train_params: dict[str, Any],
    adapter_params: dict[str, Any],
    model_params: dict[str, Any],
) -> dict[str, Any]:
    """Train `method` on the task's train.jsonl; out_dir gets the adapter / weights and method.json."""
    import mlflow

    base_manifest = read_json(Path(base_dir) / "base.json", "base model manifest")
    if method == "base":
        summary = {
            "method": "base",
            "task": task_name,
            "trainable_parameters": 0,
            "steps": 0,
            "base": base_manifest["name"],
            "base_fingerprint": base_manifest["fingerprint"],
        }
        with atomic_dir(out_dir) as tmp:
            write_json(tmp / MANIFEST, summary)
        log_numeric_metrics(summary)
        return summary
    from zflora.harness.train import train_method

    settings = train_settings(method, train_params, adapter_params, model_params["dtype"])
    examples = read_examples(Path(data_dir) / "train.jsonl")
    metrics = train_method(
        base_model_ref(base_dir),
        examples,
        out_dir,
        settings,
        work_dir=work_dir,
        trust_remote_code=model_params["trust_remote_code"],
    )
    curve = metrics.pop("loss_curve")
    if not is_main_process():  # DDP: rank 0 saves and logs
        return {**metrics, "task": task_name}
    for step, loss in curve:
        mlflow.log_metric("train_loss", loss, step=int(step))
    summary = {
        **metrics,
        "task": task_name,
        "base": base_manifest["name"],
        "base_fingerprint": base_manifest["fingerprint"],
    }
    write_json(Path(out_dir) / MANIFEST, summary)
    summary["loss_curve"] = [{"step": s, "loss": v} for s, v in curve]
    log_numeric_metrics({k: v for k, v in summary.items() if k not in ("base_fingerprint", "loss_curve")})
    log_json_artifact(summary, MANIFEST)
    if method != "fft":  # adapters are small; full fft weights stay in DVC's cache only
        mlflow.log_artifacts(out_dir, artifact_path="adapter")
    return summary
