"""`prepare` stage (one per task): the task's train, validation and test examples as JSONL.

python -m flows prepare --task embedded-math [--params params.yaml]
"""

from __future__ import annotations

from tasks.data import prepare_task
from tasks.tracking import stage_run

from .layout import data_dir
from .params import Params
from .stage import stage_flow


@stage_flow("prepare")
def prepare_flow(params: Params, task: str) -> dict:
    data = params.data.model_dump(mode="json")
    with stage_run("prepare", params.tracking.experiment, {"data": data}, tags={"task": task}):
        stats = prepare_task(task, data, str(data_dir(task)))
    print(
        f"{task}: {stats['train_examples']} train / {stats['validation_examples']} validation / "
        f"{stats['test_examples']} test examples -> {data_dir(task)}"
    )
    return stats
