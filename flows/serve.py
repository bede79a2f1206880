"""Serve the pipeline's deployments to a Prefect server, so runs can be started from its UI.

    prefect server start --host 127.0.0.1          # or: python -m flows.server start
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.serve

Deployments (all run flows/pipeline.py, i.e. DVC): `zflora-pipeline/pipeline` (everything)
and `zflora-pipeline/stage-<name>` (one stage and what it needs). In the UI, "Run" ->
"Custom run" takes `set_params` such as {"adapter.r": 32, "train.epochs": 2}: the run is
then a DVC experiment (`dvc exp run --set-param ...`), versioned and cached. At most one
run executes at a time per deployment, and runs in this workspace are serialised.
"""

from __future__ import annotations

import sys

STAGES = ("base", "prepare", "train", "fuse", "evaluate", "profile", "report")


def deployments() -> list:
    from .pipeline import pipeline_flow

    items = [
        pipeline_flow.to_deployment(
            name="pipeline",
            description="The whole zflora pipeline (dvc repro, or dvc exp run with set_params).",
            tags=["zflora", "dvc"],
            concurrency_limit=1,
        )
    ]
    for stage in STAGES:
        items.append(
            pipeline_flow.to_deployment(
                name=f"stage-{stage}",
                description=f"The `{stage}` stage and the stages it depends on.",
                parameters={"targets": [stage]},
                tags=["zflora", "dvc", stage],
                concurrency_limit=1,
            )
        )
    return items


def main(argv: list[str] | None = None) -> int:
    import os

    from zflora.errors import ZFLoRAError

    from .server import ensure_api
    from .stage import fail, quiet_user_errors

    try:
        api_url = ensure_api()
    except ZFLoRAError as e:
        return fail(str(e))
    if api_url is None:
        return fail(
            "serving deployments needs a Prefect server: start one (python -m flows.server start) or set PREFECT_API_URL"
        )
    os.environ["PREFECT_API_URL"] = api_url  # before Prefect reads its settings
    from prefect import serve
    from prefect.settings import PREFECT_API_URL, temporary_settings

    quiet_user_errors()
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        print(
            f"serving {len(STAGES) + 1} deployments to {api_url.removesuffix('/api')}; run 'zflora-pipeline/pipeline' from its UI"
        )
        serve(*deployments())
    return 0


if __name__ == "__main__":
    sys.exit(main())
