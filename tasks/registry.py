"""Fused zFLoRA models in the MLflow model registry, and `models:/` URIs for `zflora generate`.

Each fused model is logged as an MLflow pyfunc model (the HF checkpoint is its artifact;
`FusedGenerator.predict` does batched greedy generation) and registered as
`<prefix>-<base>-<task>` with an alias (`latest`). So:

    zflora generate --model models:/zflora-tiny-embedded-math@latest --prompt "..."
    mlflow models serve -m models:/zflora-tiny-embedded-math@latest --env-manager local --host 127.0.0.1
    curl -X POST 127.0.0.1:5000/invocations -H 'Content-Type: application/json' \\
         -d '{"dataframe_records": [{"prompt": "..."}], "params": {"max_new_tokens": 32}}'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc

from zflora.errors import ZFLoRAError

MODEL_ARTIFACT = "hf_model"


class FusedGenerator(mlflow.pyfunc.PythonModel):
    """Greedy text generation with a fused zFLoRA checkpoint (a standard transformers model)."""

    def load_context(self, context: Any) -> None:
        from zflora.method.loading import load_causal_lm

        self.model, self.tokenizer = load_causal_lm(context.artifacts[MODEL_ARTIFACT])

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> list[str]:
        from zflora.harness.generation import generate_text

        prompts = _prompts(model_input)
        max_new_tokens = int((params or {}).get("max_new_tokens", 64))
        return generate_text(self.model, self.tokenizer, prompts, max_new_tokens=max_new_tokens)


def _prompts(model_input: Any) -> list[str]:
    if hasattr(model_input, "columns"):  # a pandas DataFrame from the scoring server
        column = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
        return [str(v) for v in model_input[column].tolist()]
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, dict):
        value = model_input.get("prompt", [])
        return [value] if isinstance(value, str) else [str(v) for v in value]
    return [str(v) for v in model_input]


def register_fused_model(fused_dir: str, name: str, alias: str, tags: dict[str, str]) -> dict[str, Any]:
    """Log `fused_dir` as a pyfunc model in the active run, register it as `name` and point `alias` at it."""
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    import tasks
    import zflora

    example = pd.DataFrame({"prompt": ["Question: what is two plus three?\nAnswer:"]})
    signature = infer_signature(example, ["five"], params={"max_new_tokens": 64})
    code = [str(Path(zflora.__file__).parent), str(Path(tasks.__file__).parent)]
    info = mlflow.pyfunc.log_model(
        name="fused-model",
        python_model=FusedGenerator(),
        artifacts={MODEL_ARTIFACT: str(fused_dir)},
        signature=signature,
        code_paths=code,
        pip_requirements=_requirements(),
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


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [
        f"{package}=={version(package)}"
        for package in ("torch", "transformers", "safetensors", "tokenizers", "mlflow")
    ]


def resolve_models_uri(uri: str) -> str:
    """Download a registered model (`models:/name@alias`, `runs:/...`) and return its HF checkpoint dir.

    Registered as the `zflora.model_resolvers` entry point for the `models` and `runs`
    schemes, so `zflora generate --model models:/...` works without zflora importing MLflow.
    """
    import mlflow

    from tasks.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except Exception as e:  # MlflowException, missing alias, unreachable server
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ZFLoRAError(
            f"cannot fetch {uri} from the MLflow registry at {tracking_uri()} ({first}); "
            "check the name and alias (`mlflow models` / the MLflow UI) or set MLFLOW_TRACKING_URI"
        ) from None
    candidates = [local / "artifacts" / MODEL_ARTIFACT, local]
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return str(candidate)
    found = next((p.parent for p in local.rglob("config.json")), None)
    if found is None:
        raise ZFLoRAError(
            f"{uri} holds no transformers checkpoint (no config.json); register a fused model there"
        )
    return str(found)
