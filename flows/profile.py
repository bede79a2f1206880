"""`profile` stage: latency of base / LoRA / merged LoRA / zFLoRA unfused / fused, side by side.

    python -m flows profile [--params params.yaml]

Targets: `base` (the pipeline's base model) and/or presets with real model shapes.
"""

from __future__ import annotations

from tasks.io import base_model_ref, write_json
from tasks.profiling import profile_target
from tasks.tracking import stage_run

from .layout import BASE, METRICS, PROFILE
from .params import Params
from .stage import stage_flow


@stage_flow("profile")
def profile_flow(params: Params) -> dict:
    figures = {}
    with stage_run(
        "profile", params.tracking.experiment, {"profile": params.profile.model_dump(mode="json")}
    ):
        for target in params.profile.targets:
            model_dir = base_model_ref(BASE) if target == "base" else None
            settings = params.profile.settings(target, model_dir, params.stage_settings("profile")["r"])
            figures[target] = profile_target(target, settings, str(PROFILE / target))
            print(f"profiled {target}: {figures[target]}")
    write_json(METRICS / "profile.json", figures)
    return figures
