"""`prepare` stage (one per task): the task's train, validation and test examples as JSONL.

python -m flows.prepare --task embedded-math [--params params.yaml]
"""

from __future__ import annotations

if __name__ == "__main__":  # a warm worker, when one serves this code, runs the stage (flows/warm.py)
    from flows.warm import forward

    forward("flows.prepare")

import sys

from prefect import flow

from tasks.data import prepare_task
from tasks.tracking import stage_run

from .layout import data_dir
from .stage import params_of, parser, run, user_errors_fail


@flow(name="zflora-prepare", log_prints=True)
@user_errors_fail
def prepare_flow(task: str, params_path: str = "params.yaml") -> dict:
    params = params_of(params_path)
    data = params.data.model_dump(mode="json")
    with stage_run("prepare", params.tracking.experiment, {"data": data}, tags={"task": task}):
        stats = prepare_task(task, data, str(data_dir(task)))
    print(
        f"{task}: {stats['train_examples']} train / {stats['validation_examples']} validation / "
        f"{stats['test_examples']} test examples -> {data_dir(task)}"
    )
    return stats


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--task", required=True)
    args = p.parse_args(argv)
    return run(prepare_flow, args, task=args.task)


if __name__ == "__main__":
    sys.exit(main())
