"""zFLoRA models in the MLflow model registry, and `models:/` URIs for `zflora generate`.

Two kinds of registered model, both logged as code (MLflow models-from-code:
`tasks/registry_model.py` is stored as source and run on load) with safetensors
weights as artifacts, so nothing in the registry is a pickle:

- `<prefix>-<base>` (e.g. `zflora-tiny`): the multi-task model. One fused-width base
  (zero adapter = the exact base) plus every task's adapter as small files; the task
  names are in its metadata and version tags. Each `fuse@<task>` run registers a new
  version holding the previous version's adapters plus its own task's (added or
  replaced). Rows of a request name their `task` (none/null: the base).
- `<prefix>-<base>-<task>`: that task's fused checkpoint, for engines that want one
  fixed task.

    zflora generate --model models:/zflora-tiny@latest --task embedded-math --prompt "..."
    mlflow models serve -m models:/zflora-tiny@latest --env-manager local --host 127.0.0.1 --port 5001
    curl -s 127.0.0.1:5001/invocations -H 'Content-Type: application/json' -d '{"dataframe_records":
         [{"prompt": "...", "task": "embedded-math"}, {"prompt": "..."}], "params": {"max_new_tokens": 32}}'
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from zflora.errors import ZFLoRAError

MODEL_CODE = Path(__file__).with_name("registry_model.py")
MODEL_ARTIFACT = "hf_model"  # the per-task model's fused checkpoint
MULTITASK_ARTIFACT = "multitask"  # the multi-task model's directory (base/ + adapters/<task>/)


def _signature() -> Any:
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "prompt"), ColSpec("string", "task", required=False)]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", 64), ParamSpec("batch_size", "long", 16)]),
    )


def _log_and_register(
    artifact_name: str,
    artifact_dir: str | Path,
    model_name: str,
    model_config: dict[str, Any],
    name: str,
    alias: str,
    tags: dict[str, str],
    metadata: dict[str, Any],
) -> dict[str, Any]:
    """Log `artifact_dir` with the model code in the active run, register it as `name`, set `alias` and tags."""
    from mlflow import MlflowClient

    import zflora

    artifact_dir = Path(artifact_dir)
    with tempfile.TemporaryDirectory(prefix="zflora-register-", dir=artifact_dir.parent) as tmp:
        # MLflow names the stored artifact after the directory and refuses symlinks: stage hard links
        staged = Path(tmp) / artifact_name
        shutil.copytree(artifact_dir, staged, copy_function=_link_or_copy)
        info = mlflow.pyfunc.log_model(
            name=model_name,
            python_model=str(MODEL_CODE),
            artifacts={artifact_name: str(staged)},
            model_config=model_config,
            signature=_signature(),
            code_paths=[str(Path(zflora.__file__).parent)],
            pip_requirements=_requirements(),
            metadata={"zflora": metadata},
            registered_model_name=name,
            await_registration_for=60,
        )
    version = str(info.registered_model_version)
    client = MlflowClient()
    if alias.lower() != "latest":  # MLflow reserves `latest`: it always resolves to the newest version
        client.set_registered_model_alias(name, alias, version)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    return {
        "name": name,
        "version": version,
        "alias": alias,
        "uri": f"models:/{name}@{alias}",
        "model_uri": info.model_uri,
    }


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


def register_fused_model(
    fused_dir: str, name: str, alias: str, tags: dict[str, str], task: str | None = None
) -> dict[str, Any]:
    """Register one task's fused checkpoint as `name` (a pyfunc serving that task only)."""
    return _log_and_register(
        MODEL_ARTIFACT,
        fused_dir,
        "fused-model",
        {"zflora_task": task},  # MLflow also logs these as run params: keys differ from the multi-task one
        name,
        alias,
        tags,
        {"kind": "fused", "task": task},
    )


def register_multitask_model(
    multitask_dir: str, name: str, alias: str, tags: dict[str, str]
) -> dict[str, Any]:
    """Register a multi-task directory (MultiTaskModel.save) as `name`; its tasks go in metadata and tags."""
    from zflora.method.multitask import read_manifest

    manifest = read_manifest(multitask_dir)
    tasks = sorted(manifest["tasks"])
    registered = _log_and_register(
        MULTITASK_ARTIFACT,
        multitask_dir,
        "multitask-model",
        {"zflora_kind": "multitask"},
        name,
        alias,
        {**tags, "tasks": ",".join(tasks)},
        {"kind": "multitask", **manifest},
    )
    return {**registered, "tasks": tasks}


def latest_version(name: str) -> str | None:
    """The newest version of registered model `name`, or None when it does not exist yet."""
    from mlflow import MlflowClient

    versions = MlflowClient().search_model_versions(f"name = '{name}'")
    return str(max(int(v.version) for v in versions)) if versions else None


def task_holders(name: str, below: int | None = None) -> dict[str, str]:
    """Task -> the newest version of multi-task model `name` holding it (from the versions'
    `tasks` tags); with `below`, among the versions numbered below it only."""
    from mlflow import MlflowClient

    holders: dict[str, str] = {}
    for version in sorted(
        MlflowClient().search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version)
    ):
        if below is not None and int(version.version) >= below:
            continue
        for task in filter(None, (version.tags or {}).get("tasks", "").split(",")):
            holders[task] = str(version.version)
    return holders


def tag_version(name: str, version: str, key: str, value: str) -> None:
    from mlflow import MlflowClient

    MlflowClient().set_model_version_tag(name, version, key, value)


def download_adapters(name: str, version: str, dest: str | Path) -> dict[str, Path]:
    """The adapters of version `version` of multi-task model `name` (only the small adapter files)."""
    uri = f"models:/{name}/{version}/artifacts/{MULTITASK_ARTIFACT}/adapters"
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
    except Exception as e:  # MlflowException: an older version that is not a multi-task model
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        print(f"{name} version {version} holds no adapters ({first}); starting a fresh multi-task model")
        return {}
    return {p.name: p for p in sorted(local.iterdir()) if p.is_dir()}


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [
        f"{package}=={version(package)}"
        for package in ("torch", "transformers", "safetensors", "tokenizers", "mlflow", "pandas")
    ]


def resolve_models_uri(uri: str) -> str:
    """Download a registered model (`models:/name@alias`, `runs:/...`) and return a local model path.

    A per-task model gives its HF checkpoint directory, a multi-task model its multi-task
    directory (base/ + adapters/). Registered as the `zflora.model_resolvers` entry point
    for the `models` and `runs` schemes, so `zflora generate --model models:/...` works
    without zflora importing MLflow.
    """
    import mlflow

    from tasks.tracking import DEFAULT_DB, project_root, tracking_uri

    if not os.environ.get("MLFLOW_TRACKING_URI") and not (project_root() / DEFAULT_DB).is_file():
        # MLflow would create an empty store here and then find no model in it
        raise ZFLoRAError(
            f"no MLflow store in {project_root()} (no {DEFAULT_DB}) to look {uri} up in; run from the "
            "project folder after `make run`, or set MLFLOW_TRACKING_URI to the tracking server"
        )
    mlflow.set_tracking_uri(tracking_uri())
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except Exception as e:  # MlflowException, missing alias, unreachable server
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ZFLoRAError(
            f"cannot fetch {uri} from the MLflow registry at {tracking_uri()} ({first}); "
            "check the name and alias (`mlflow models` / the MLflow UI) or set MLFLOW_TRACKING_URI"
        ) from None
    for candidate in (local / "artifacts" / MULTITASK_ARTIFACT, local / "artifacts" / MODEL_ARTIFACT, local):
        if (candidate / "multitask.json").is_file() or (candidate / "config.json").is_file():
            return str(candidate)
    found = next((p.parent for p in local.rglob("config.json")), None)
    if found is None:
        raise ZFLoRAError(
            f"{uri} holds no transformers checkpoint (no config.json); register a fused model there"
        )
    return str(found)
