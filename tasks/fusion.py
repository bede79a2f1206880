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
    """A new version of multi-task model `name`: every task the registry holds plus `task`'s adapter.

    Each task's adapter comes from the newest version holding it (the version tags say which
    tasks a version holds), so a version never loses a task that an earlier one had. When
    fuse stages of a pool run register at the same time, one version can lack the task of
    another registered meanwhile: once its own tags are set, each registration checks that
    the newest version (what MLflow's `latest` serves) holds every task of every version,
    and if not, tags it `incomplete` with what it lacks and registers again. The base is `fused_dir` with its adapter zeroed;
    an adapter that no longer fits it (another base fingerprint, a larger r) is dropped with
    a printed reason and a tag, so every version is consistent by construction.
    """
    from .registry import tag_version, task_holders

    attempts = []
    for _attempt in range(5):
        registered = _register_union(task, adapter_dir, fused_dir, name, alias, tags, task_holders(name))
        attempts.append(registered["version"])
        # with this version's tags set, look again: every task any version holds must be in the
        # newest one (what `latest` serves); one registered at the same time may lack some
        holders = task_holders(name)
        newest = max(holders.values(), key=int)
        lacking = sorted(t for t, v in holders.items() if v != newest and t not in registered["dropped"])
        if not lacking:
            break
        tag_version(name, newest, "incomplete", f"lacks {lacking}: registered concurrently, superseded")
        print(f"{name} version {newest} lacks {lacking} (registered concurrently); registering again")
    registered["attempts"] = attempts
    log_json_artifact(registered, "registered_multitask_model.json")
    return registered


def _register_union(
    task: str,
    adapter_dir: str,
    fused_dir: str,
    name: str,
    alias: str,
    tags: dict[str, str],
    holders: dict[str, str],
) -> dict[str, Any]:
    from zflora.errors import ZFLoRAError
    from zflora.method.loading import load_causal_lm
    from zflora.method.multitask import MultiTaskModel

    from .registry import download_adapters, register_multitask_model

    with tempfile.TemporaryDirectory(prefix="zflora-multitask-") as tmp:
        adapters: dict[str, Any] = {}
        for version in sorted(set(holders.values()), key=int):  # newer versions overwrite older ones
            wanted = [t for t, v in holders.items() if v == version and t != task]
            downloaded = download_adapters(name, version, Path(tmp) / f"v{version}")
            adapters.update({t: path for t, path in downloaded.items() if t in wanted})
        fused, tokenizer = load_causal_lm(fused_dir)
        kept: dict[str, Any] = {}
        dropped: dict[str, str] = {}
        for other, path in adapters.items():
            try:  # validates against this base (fingerprint, r <= fused width, shapes, finite values)
                MultiTaskModel(fused, {other: path})
            except ZFLoRAError as e:
                print(f"{name}: dropping task {other!r} of version {holders[other]}: {e}")
                dropped[other] = str(e)
                continue
            kept[other] = path
        multitask = MultiTaskModel(fused, {**kept, task: adapter_dir}, tokenizer)
        multitask.save(Path(tmp) / "multitask")
        extra = {"dropped": ",".join(sorted(dropped))} if dropped else {}
        registered = register_multitask_model(str(Path(tmp) / "multitask"), name, alias, {**tags, **extra})
    registered["previous_version"] = max(holders.values(), key=int) if holders else None
    registered["dropped"] = sorted(dropped)
    return registered
