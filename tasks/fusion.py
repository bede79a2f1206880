"""The `fuse` stage's tasks: export the zFLoRA adapter as a standard checkpoint, then register it
(as its task's own model and as a new version of the base's multi-task model)."""

from __future__ import annotations

import tempfile
from pathlib import Path
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

    registered = register_fused_model(fused_dir, name, alias, tags, task=tags.get("task"))
    log_json_artifact(registered, "registered_model.json")
    return registered


@task(name="register-multitask-model")
def register_multitask(
    task: str, adapter_dir: str, fused_dir: str, name: str, alias: str, tags: dict[str, str]
) -> dict[str, Any]:
    """A new version of multi-task model `name`: the previous version's adapters plus `task`'s (added or replaced).

    The base is `fused_dir` with its adapter zeroed (the exact base at the fused width).
    A previous adapter that no longer fits it (another base fingerprint, a larger r) is
    dropped with a printed reason, so every version is consistent by construction.
    """
    from zflora.errors import ZFLoRAError
    from zflora.method.loading import load_causal_lm
    from zflora.method.multitask import MultiTaskModel

    from .registry import download_adapters, latest_version, register_multitask_model

    with tempfile.TemporaryDirectory(prefix="zflora-multitask-") as tmp:
        previous = latest_version(name)
        adapters = download_adapters(name, previous, Path(tmp) / "previous") if previous else {}
        adapters.pop(task, None)
        fused, tokenizer = load_causal_lm(fused_dir)
        kept: dict[str, Any] = {}
        for other, path in adapters.items():
            try:  # validates against this base (fingerprint, r <= fused width, shapes, finite values)
                MultiTaskModel(fused, {other: path})
            except ZFLoRAError as e:
                print(f"{name}: dropping task {other!r} of version {previous}: {e}")
                continue
            kept[other] = path
        multitask = MultiTaskModel(fused, {**kept, task: adapter_dir}, tokenizer)
        multitask.save(Path(tmp) / "multitask")
        registered = register_multitask_model(str(Path(tmp) / "multitask"), name, alias, tags)
    registered["previous_version"] = previous
    log_json_artifact(registered, "registered_multitask_model.json")
    return registered
