"""`tune` stage (one per method): select the method's learning rate on the validation splits.

    python -m flows.tune --method zflora [--params params.yaml]

Each candidate in tune.learning_rates[<method>] trains on the training examples of every
tuned task (tune.tasks, default data.tasks) for tune.max_steps (default: the train
budget) with the first seed, and is scored on those tasks' validation examples (carved
from the training data by the prepare stage; the test split is never read). The best
mean validation score wins. A single candidate (or none: the method's default) is used
as is, untuned. The train stage reads the selection.
"""

from __future__ import annotations

if __name__ == "__main__":  # a warm worker, when one serves this code, runs the stage (flows/warm.py)
    from flows.warm import forward

    forward("flows.tune")

import sys

from prefect import flow

from tasks.io import write_json
from tasks.tracking import stage_run
from tasks.tuning import tune

from .layout import BASE, METRICS, WORK, data_dir, tune_dir
from .stage import check_method_listed, params_of, parser, run, user_errors_fail


@flow(name="zflora-tune", log_prints=True)
@user_errors_fail
def tune_flow(method: str, params_path: str = "params.yaml") -> dict:
    params = params_of(params_path)
    check_method_listed(params, method, params_path)
    settings = params.stage_settings("tune")
    tune_params, train = settings.pop("tune"), settings.pop("train")
    candidates = [] if method == "base" else tune_params.candidates(method)
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
            **settings,
        )
    write_json(METRICS / "tune" / f"{method}.json", selection)
    if selection["tuned"]:
        print(
            f"{method}: learning rate {selection['learning_rate']:g} selected on validation from {candidates}"
        )
    elif method != "base":
        print(f"{method}: learning rate {selection['learning_rate']:g} (a single candidate: not tuned)")
    return selection


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--method", required=True)
    args = p.parse_args(argv)
    return run(tune_flow, args, method=args.method)


if __name__ == "__main__":
    sys.exit(main())
