"""`evaluate` stage (matrix task x method): accuracy of one method on one task's test split
(the first seed's model in every served form; the other seeds' models in their headline form).

python -m flows.evaluate --task embedded-math --method zflora [--params params.yaml]
"""

from __future__ import annotations

if __name__ == "__main__":  # a warm worker, when one serves this code, runs the stage (flows/warm.py)
    from flows.warm import forward

    forward("flows.evaluate")

import sys

from prefect import flow

from tasks.evaluation import evaluate
from tasks.io import write_json
from tasks.tracking import stage_run

from .layout import BASE, METRICS, SEEDS, data_dir, eval_dir, extra_seeds, train_dir
from .stage import params_of, parser, run, user_errors_fail


@flow(name="zflora-evaluate", log_prints=True)
@user_errors_fail
def evaluate_flow(task: str, method: str, params_path: str = "params.yaml") -> dict:
    params = params_of(params_path)
    logged = {"evaluate": params.evaluate.model_dump(mode="json")}
    with stage_run("evaluate", params.tracking.experiment, logged, tags={"task": task, "method": method}):
        result = evaluate(
            task,
            method,
            str(BASE),
            str(data_dir(task)),
            str(train_dir(task, method)),
            str(eval_dir(task, method)),
            **params.stage_settings("evaluate"),
            other_seeds={
                seed: (str(train_dir(task, method, seed)), str(eval_dir(task, method) / SEEDS / str(seed)))
                for seed in extra_seeds(train_dir(task, method))
            },
        )
    write_json(METRICS / "eval" / task / f"{method}.json", result)
    score = {k: round(v, 4) for k, v in result.items() if k in ("accuracy", "rouge1", "rouge2", "rougeL")}
    print(f"{task}/{method}: {score} (forms agree on {100 * result['prediction_agreement']:.0f}%)")
    if "seeds" in result:
        print(f"{task}/{method}: score per seed {result['seeds']}, mean {result['score_mean']:.1f}")
    return result


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--task", required=True)
    p.add_argument("--method", required=True)
    args = p.parse_args(argv)
    return run(evaluate_flow, args, task=args.task, method=args.method)


if __name__ == "__main__":
    sys.exit(main())
