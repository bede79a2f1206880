"""Run one pipeline stage: what each `cmd` of dvc.yaml runs.

    python -m flows <stage> [--task T] [--method M] [--params params.yaml]
    python -m flows train --task embedded-math --method zflora

The stage's flow lives in flows/<stage>.py (`<stage>_flow`, built with flows.stage.stage_flow);
this entry hands the command to the warm worker when one serves this workspace
(flows/warm.py), else imports the stage and runs it here.
"""

from __future__ import annotations

import os
import sys

from .layout import STAGES


def run_stage(argv: list[str]) -> int:
    """Import the stage module and run its flow's command line (in this process)."""
    import importlib

    from .stage import main

    name = argv[0]
    module = importlib.import_module(f"flows.{name}")
    return main(getattr(module, f"{name}_flow"), module.__doc__.splitlines()[0], argv[1:])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STAGES:
        got = repr(argv[0]) if argv else "nothing"
        print(
            f"zflora: error: expected a stage ({', '.join(STAGES)}), got {got}; e.g. python -m flows report",
            file=sys.stderr,
        )
        return 2
    if os.environ.get("ZFLORA_RESTORE_ONLY"):  # a pool run restores outputs (flows/pool.py): run none
        stage = os.environ.get("DVC_STAGE", argv[0])
        print(
            f"zflora: error: {stage} is not in the pool's run-cache, so it would run here; "
            "its worker did not push it (see its flow run): run the pipeline again",
            file=sys.stderr,
        )
        return 2
    from .warm import forward

    forward(argv)  # returns when this process should run the stage itself
    return run_stage(argv)


if __name__ == "__main__":
    sys.exit(main())
