"""`train` stage (matrix task x method): fine-tune one method on one task.

    python -m flows.train --task embedded-math --method zflora [--params params.yaml]

The learning rate is the tune stage's selection (artifacts/tune/<method>). With
train.seeds = n the method trains n times (seeds seed ... seed+n-1): the first seed's
model goes to artifacts/train/<task>/<method> (fused and registered), the others to its
seeds/<seed>/ sub-folders. Checkpoints go to work/checkpoints/<task>/<method>[-seed-<s>]
every `train.save_steps`; rerunning a killed stage resumes from the last complete one.
Under `torchrun --nproc_per_node N` the same entry point trains with DDP (HF Trainer);
only rank 0 writes.
"""

from __future__ import annotations

if __name__ == "__main__":  # a warm worker, when one serves this code, runs the stage (flows/warm.py)
    from flows.warm import forward

    forward("flows.train")

import sys

from prefect import flow

from tasks.io import write_json
from tasks.tracking import is_main_process, stage_run
from tasks.training import train
from tasks.tuning import selected_learning_rate

from .layout import BASE, METRICS, checkpoint_dir, data_dir, train_dir, tune_dir
from .stage import check_method_listed, params_of, parser, run, user_errors_fail


@flow(name="zflora-train", log_prints=True)
@user_errors_fail
def train_flow(task: str, method: str, params_path: str = "params.yaml") -> dict:
    params = params_of(params_path)
    check_method_listed(params, method, params_path)
    settings = params.stage_settings("train")
    section = settings.pop("train")
    rate = selected_learning_rate(tune_dir(method))
    seeds = section.seed_list() if method != "base" else section.seed_list()[:1]
    logged = {"train": section.to_dict(), "adapter": params.adapter.to_dict(), "learning_rate": rate}
    with stage_run("train", params.tracking.experiment, logged, tags={"task": task, "method": method}):
        runs = [
            train(
                task,
                method,
                str(BASE),
                str(data_dir(task)),
                str(train_dir(task, method, None if index == 0 else seed)),
                str(checkpoint_dir(task, method, None if index == 0 else seed)),
                train=section.with_learning_rate(method, rate, seed),
                **settings,
                label="" if index == 0 else f"seed-{seed}",
            )
            for index, seed in enumerate(seeds)
        ]
    summary = runs[0]
    if len(runs) > 1:
        summary["seeds"] = {str(seed): run.get("final_loss") for seed, run in zip(seeds, runs)}
    if is_main_process():
        curve = summary.pop("loss_curve", [])
        write_json(
            METRICS / "train" / task / f"{method}.json",
            {k: v for k, v in summary.items() if k != "base_fingerprint"},
        )
        write_json(METRICS / "train" / task / f"{method}-loss.json", curve)
        print(
            f"{task}/{method}: {summary.get('steps', 0)} steps, final loss {summary.get('final_loss', '-')} -> {train_dir(task, method)}"
        )
    return summary


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--task", required=True)
    p.add_argument("--method", required=True)
    args = p.parse_args(argv)
    if not is_main_process():
        # torchrun / accelerate: the other ranks join the same Trainer (DDP) without a
        # Prefect flow run or MLflow run of their own; rank 0 orchestrates and logs
        from .stage import exit_code

        return exit_code(
            _as_state(train_flow.fn(task=args.task, method=args.method, params_path=args.params))
        )
    return run(train_flow, args, task=args.task, method=args.method)


def _as_state(result):
    from prefect.states import Completed, State

    return result if isinstance(result, State) else Completed()


if __name__ == "__main__":
    sys.exit(main())
