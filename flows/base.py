"""`base` stage: the base model every adapter is trained on.

    python -m flows base [--params params.yaml]

Embedded default: trains the tiny Llama and its tokenizer on a generated corpus. With
`model.name` a .gguf file or a GGUF preset (`smollm2-135m-instruct`): dequantizes it once
into artifacts/base/ (safetensors, tokenizer, chat template) and records the file's
sha256; later stages load that checkpoint. With an HF id or a local directory: loads it
once (proving it is available and supported) and records its name and fingerprint.
"""

from __future__ import annotations

from tasks.base import resolve_base
from tasks.io import write_json
from tasks.tracking import stage_run

from .layout import BASE, METRICS
from .params import Params
from .stage import stage_flow


@stage_flow("base")
def base_flow(params: Params) -> dict:
    model = params.model.model_dump(mode="json")
    with stage_run("base", params.tracking.experiment, {"model": model}, tags={"base": params.model.label}):
        manifest = resolve_base(model, str(BASE))
    write_json(
        METRICS / "base.json",
        {k: v for k, v in manifest.items() if k not in ("fingerprint", "loss_curve", "path", "gguf_file")},
    )
    print(
        f"base model {manifest['name']}: {manifest['architecture']}, {manifest['parameters']:,} parameters -> {BASE}"
    )
    return manifest
