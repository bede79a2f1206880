"""`profile` stage: latency of base / LoRA / merged LoRA / zFLoRA unfused / fused, side by side.

    python -m flows.profile [--params params.yaml]

Targets: `base` (the pipeline's base model) and/or presets with real model shapes.
"""

from __future__ import annotations

if __name__ == "__main__":  # a warm worker, when one serves this code, runs the stage (flows/warm.py)
    from flows.warm import forward

    forward("flows.profile")

import sys

from prefect import flow

from tasks.base import base_model_ref
from tasks.io import write_json
from tasks.profiling import profile_target
from tasks.tracking import stage_run

from .layout import BASE, METRICS, PROFILE
from .stage import params_of, parser, run, user_errors_fail


@flow(name="zflora-profile", log_prints=True)
@user_errors_fail
def profile_flow(params_path: str = "params.yaml") -> dict:
    params = params_of(params_path)
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


def main(argv: list[str] | None = None) -> int:
    return run(profile_flow, parser(__doc__.splitlines()[0]).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
