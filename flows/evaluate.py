"""`evaluate` stages: accuracy of one method on one task's test split (the first seed's model
in every served form; the other seeds' models in their headline form).

    python -m flows evaluate --task embedded-math --method zflora [--params params.yaml]
    python -m flows evaluate --task embedded-math --method base     # the evaluate-base stages

`evaluate` (matrix task x train.methods) reads the trained model; `evaluate-base` (one per
task) scores the base model itself, which trains nothing.
"""

from __future__ import annotations

from tasks.evaluation import evaluate
from tasks.io import write_json
from tasks.tracking import stage_run

from .layout import BASE, METRICS, SEEDS, data_dir, eval_dir, extra_seeds, train_dir
from .params import Params
from .stage import check_method_listed, stage_flow


@stage_flow("evaluate")
def evaluate_flow(params: Params, task: str, method: str) -> dict:
    if method != "base":  # the base model is always evaluated (the evaluate-base stages)
        check_method_listed(params, method)
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
