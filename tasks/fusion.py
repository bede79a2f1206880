"""The `fuse` stage's tasks: export the zFLoRA adapter as a standard checkpoint, then register it."""

from __future__ import annotations

from typing import Any

from prefect import task

from zflora.method.export import fuse_to_directory

from .tracking import log_json_artifact, log_numeric_metrics


@task(name="fuse-adapter")
def fuse(
    base_ref: str, adapter_dir: str, out_dir: str, pad_multiple: int, dtype: str, trust_remote_code: bool
) -> dict[str, Any]:
    summary = fuse_to_directory(
        base_ref,
        adapter_dir,
        out_dir,
        dtype=dtype,
        pad_multiple=pad_multiple,
        trust_remote_code=trust_remote_code,
    )
    log_numeric_metrics(summary)
    log_json_artifact(summary, "fuse.json")
    return summary


@task(name="register-fused-model")
def register(fused_dir: str, name: str, alias: str, tags: dict[str, str]) -> dict[str, Any]:
    from .registry import register_fused_model

    registered = register_fused_model(fused_dir, name, alias, tags)
    log_json_artifact(registered, "registered_model.json")
    return registered
