"""The `base` stage's task: train the embedded tiny base, dequantize a GGUF base once, or check
and record a hub / local one."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import task

from zflora.method.fingerprint import base_fingerprint
from zflora.method.gguf.presets import is_gguf_ref
from zflora.method.gguf.read import dequantize_to_directory
from zflora.method.loading import load_causal_lm

from .io import base_model_ref, write_json  # noqa: F401 - base_model_ref: where later stages load the base
from .tracking import log_json_artifact, log_numeric_metrics

MANIFEST = "base.json"


@task(name="resolve-base-model")
def resolve_base(model_params: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """Embedded: pretrain the tiny base into out_dir. GGUF (a .gguf path or a preset such as
    smollm2-135m-instruct): dequantize it once into out_dir as a safetensors checkpoint with its
    tokenizer, recording the file's sha256; later stages load that, never the GGUF. Otherwise:
    load the named model once (proving it is reachable and supported) and record its name and
    fingerprint."""
    import mlflow

    from zflora.method.architectures import layout_for

    start = time.perf_counter()
    out = Path(out_dir)
    if model_params["name"] == "embedded":
        from zflora.harness.tinybase import TinyBaseSettings, pretrain_tiny_base

        metrics = pretrain_tiny_base(out, TinyBaseSettings(**model_params["tiny"]), progress=True)
        model, _ = load_causal_lm(out, with_tokenizer=False)
        manifest = {"name": "embedded", "path": str(out), **metrics}
    elif is_gguf_ref(model_params["name"]):
        info = dequantize_to_directory(model_params["name"], out, dtype=model_params["dtype"])
        model, _ = load_causal_lm(out, with_tokenizer=False)
        manifest = {
            "name": model_params["name"],
            "path": str(out),
            "gguf_file": info["gguf_file"],
            "gguf_sha256": info["gguf_sha256"],
            "chat_template": info["chat_template"],
        }
    else:
        model, tokenizer = load_causal_lm(
            model_params["name"],
            dtype=model_params["dtype"],
            trust_remote_code=model_params["trust_remote_code"],
        )
        if tokenizer is None:
            from zflora.errors import ZFLoRAError

            raise ZFLoRAError(f"base model {model_params['name']!r} has no tokenizer; the pipeline needs one")
        out.mkdir(parents=True, exist_ok=True)
        manifest = {"name": model_params["name"]}
    layout_for(model)  # refuse an unsupported architecture here, not in every later stage
    manifest.update(
        architecture=type(model).__name__,
        parameters=sum(p.numel() for p in model.parameters()),
        hidden_size=model.config.hidden_size,
        layers=model.config.num_hidden_layers,
        fingerprint=base_fingerprint(model),
        seconds=round(time.perf_counter() - start, 2),
    )
    write_json(out / MANIFEST, manifest)
    log_numeric_metrics({k: v for k, v in manifest.items() if k != "fingerprint"}, prefix="base.")
    log_json_artifact(manifest, MANIFEST)
    if model_params["name"] == "embedded":
        mlflow.log_artifacts(str(out), artifact_path="base-model")
    return manifest
