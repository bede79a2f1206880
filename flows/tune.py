"""`tune` stage (one per trained method): select the method's learning rate on the validation splits.

    python -m flows tune --method zflora [--params params.yaml]

Each candidate in tune.learning_rates[<method>] trains on the training examples of every
tuned task (tune.tasks, default data.tasks) for tune.max_steps (default: the train
budget) with the first seed, and is scored on those tasks' validation examples (carved
from the training data by the prepare stage; the test split is never read). The best
mean validation score wins. A single candidate (or none: the method's default) is used
as is, untuned. The train stage reads the selection.
"""

from __future__ import annotations

from tasks.io import write_json
from tasks.tracking import stage_run
from tasks.tuning import tune

from .layout import BASE, METRICS, WORK, data_dir, tune_dir
from .params import Params
from .stage import check_method_listed, stage_flow


@stage_flow("tune")
def tune_flow(params: Params, method: str) -> dict:
    check_method_listed(params, method)
    settings = params.stage_settings("tune")
    tune_params, train = settings.pop("tune"), settings.pop("train")
    candidates = tune_params.candidates(method)
    logged = {"tune": tune_params.model_dump(mode="json"), "train": train.to_dict()}
    with stage_run("tune", params.tracking.experiment, logged, tags={"method": method}):
        selection = tune(
            method,
            candidates,
            str(BASE),
            {task: str(data_dir(task)) for task in tune_params.tasks},
            str(tune_dir(method)),
            str(WORK / "tune" / method),
            train=train.with_learning_rate(method, None),
            init_scales=tune_params.init_scales.get(method),
            jobs=tune_params.jobs,
            **settings,
        )
    write_json(METRICS / "tune" / f"{method}.json", selection)
    how = "selected on validation from" if selection["tuned"] else "a single candidate, not tuned:"
    print(f"{method}: learning rate {selection['learning_rate']:g} ({how} {selection['candidates']})")
    if selection["tuned"] and tune_params.per_task:
        print(f"{method}: per task {selection['per_task']}")
    return selection
