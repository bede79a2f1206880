"""`base` stage: the base model every adapter is trained on.

    python -m flows.base [--params params.yaml]

Embedded default: trains the tiny Llama and its tokenizer on a generated corpus. With
`model.name` a .gguf file or a GGUF preset (`smollm2-135m-instruct`): dequantizes it once
into artifacts/base/ (safetensors, tokenizer, chat template) and records the file's
sha256; later stages load that checkpoint. With an HF id or a local directory: loads it
once (proving it is available and supported) and records its name and fingerprint.
"""

from __future__ import annotations

if __name__ == "__main__":  # a warm worker, when one serves this code, runs the stage (flows/warm.py)
    from flows.warm import forward

    forward("flows.base")

import sys

from prefect import flow

from tasks.base import resolve_base
from tasks.io import write_json
from tasks.tracking import stage_run

from .layout import BASE, METRICS
from .stage import params_of, parser, run, user_errors_fail


@flow(name="zflora-base", log_prints=True)
@user_errors_fail
def base_flow(params_path: str = "params.yaml") -> dict:
    params = params_of(params_path)
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


def main(argv: list[str] | None = None) -> int:
    return run(base_flow, parser(__doc__.splitlines()[0]).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
