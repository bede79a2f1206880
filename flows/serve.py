"""Serve the pipeline's deployments to a Prefect server, so runs can be started from its UI.

    python -m flows.server start                  # or: make prefect-ui
    python -m flows.serve                         # or: make serve
    python -m flows.serve --allow-param model.name --allow-param data.data_dir

Deployments (all run flows/pipeline.py, i.e. DVC): `zflora-pipeline/pipeline` (everything)
and `zflora-pipeline/stage-<name>` (one stage and what it needs). In the UI, "Run" ->
"Custom run" takes `set_params` such as {"adapter.r": 32, "train.epochs": 2}: the run is
then a DVC experiment (`dvc exp run --set-param ...`), versioned and cached. At most one
run executes at a time per deployment, and runs in this workspace are serialised.

Without PREFECT_API_URL the deployments go to this workspace's own server (started if
needed), which asks for the auth string in `.prefect/server.auth`. A run may override
only the experiment knobs (flows.pipeline.UI_ALLOWED); `--allow-param KEY` (repeatable,
`section.*` for a whole section) lets runs set more, e.g. `model.name` or
`data.data_dir`. Anything else ends the run FAILED with one line, before any DVC command.
"""

from __future__ import annotations

import sys

from .layout import STAGES


def deployments() -> list:
    from prefect.types.entrypoint import EntrypointType

    from .pipeline import pipeline_flow

    # runs import `flows.pipeline` as a module of the `flows` package: loaded as a script
    # (flows/pipeline.py), Prefect would put flows/ first on sys.path, where flows/profile.py
    # hides the standard library's `profile` module (imported by cProfile, hence by torch)
    module = EntrypointType.MODULE_PATH
    items = [
        pipeline_flow.to_deployment(
            name="pipeline",
            description="The whole zflora pipeline (dvc repro, or dvc exp run with set_params).",
            tags=["zflora", "dvc"],
            concurrency_limit=1,
            entrypoint_type=module,
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
                entrypoint_type=module,
            )
        )
    return items


def main(argv: list[str] | None = None) -> int:
    import argparse
    import os

    from zflora.errors import ZFLoRAError

    from .pipeline import ALLOW_ENV, ALLOW_PATTERN, UI_ALLOWED
    from .server import attached, auth_path, client_env, ensure_api
    from .stage import fail, quiet_user_errors

    p = argparse.ArgumentParser(description="serve the pipeline's deployments to a Prefect server")
    p.add_argument(
        "--allow-param",
        action="append",
        default=[],
        metavar="KEY",
        help=f"a params key (or section.*) that runs may also override; always allowed: {', '.join(UI_ALLOWED)}",
    )
    args = p.parse_args(argv)
    bad = [k for k in args.allow_param if not ALLOW_PATTERN.fullmatch(k)]
    if bad:
        return fail(f"--allow-param {bad[0]!r} is not a params key; write e.g. model.name or model.*")
    os.environ[ALLOW_ENV] = ",".join(args.allow_param)  # read by the flow runs this process starts
    try:
        api_url = ensure_api()
    except ZFLoRAError as e:
        return fail(str(e))
    if api_url is None:
        return fail(
            "serving deployments needs a Prefect server: start one (python -m flows.server start) or set PREFECT_API_URL"
        )
    from prefect import serve

    quiet_user_errors()
    login = f" (UI login: the auth string in {auth_path()})" if client_env(api_url) else ""
    extra = f"; runs may also set {', '.join(args.allow_param)}" if args.allow_param else ""
    with attached(api_url):
        print(
            f"serving {len(STAGES) + 1} deployments to {api_url.removesuffix('/api')}{login}; "
            f"run 'zflora-pipeline/pipeline' from its UI{extra}"
        )
        serve(*deployments())
    return 0


if __name__ == "__main__":
    sys.exit(main())
