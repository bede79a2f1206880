"""`fuse` stage (one per task): export the task's zFLoRA adapter as a standard checkpoint
of hidden size d + r and register it in the MLflow model registry, as the task's own
model `<prefix>-<base>-<task>` and as a new version of the multi-task model
`<prefix>-<base>` (the previous version's adapters plus this task's).

    python -m flows fuse --task embedded-math [--params params.yaml]
"""

from __future__ import annotations

from tasks.fusion import fuse, register, register_multitask
from tasks.io import base_model_ref, write_json
from tasks.tracking import stage_run

from .layout import BASE, METRICS, fused_dir, train_dir
from .params import Params
from .stage import stage_flow


@stage_flow("fuse")
def fuse_flow(params: Params, task: str) -> dict:
    logged = {
        "fuse": params.fuse.model_dump(mode="json"),
        "tracking": params.tracking.model_dump(mode="json"),
    }
    with stage_run(
        "fuse", params.tracking.experiment, logged, tags={"task": task, "method": "zflora"}
    ) as run_info:
        summary = fuse(
            base_model_ref(BASE),
            str(train_dir(task, "zflora")),
            str(fused_dir(task)),
            params.fuse.pad_multiple,
            params.model.dtype,
            params.model.trust_remote_code,
        )
        if params.fuse.register_model:
            name = params.registered_model_name(task)
            tags = {
                "task": task,
                "base": params.model.name,
                "r": str(summary["r"]),
                "run_id": run_info.info.run_id,
            }
            summary["registered"] = register(str(fused_dir(task)), name, params.tracking.alias, tags)
            print(f"registered {summary['registered']['uri']} (version {summary['registered']['version']})")
            multitask = f"{params.tracking.registry_prefix}-{params.model.label}"
            summary["registered_multitask"] = register_multitask(
                task,
                str(train_dir(task, "zflora")),
                str(fused_dir(task)),
                multitask,
                params.tracking.alias,
                tags,
            )
            registered = summary["registered_multitask"]
            print(
                f"registered {registered['uri']} (version {registered['version']}): "
                f"tasks {', '.join(registered['tasks'])} on one fused base"
            )
    write_json(METRICS / "fuse" / f"{task}.json", summary)
    print(
        f"{task}: fused hidden {summary['base_hidden_size']} -> {summary['fused_hidden_size']} -> {fused_dir(task)}"
    )
    return summary
