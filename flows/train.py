"""`train` stage (matrix task x method): fine-tune one method on one task.

    python -m flows train --task embedded-math --method zflora [--params params.yaml]

The learning rate (and zFLoRA's init scale, when tuned) is the tune stage's selection for
this task (artifacts/tune/<method>; tune.per_task). With
train.seeds = n the method trains n times (seeds seed ... seed+n-1): the first seed's
model goes to artifacts/train/<task>/<method> (fused and registered), the others to its
seeds/<seed>/ sub-folders. Checkpoints go to work/checkpoints/<task>/<method>[-seed-<s>]
every `train.save_steps`; rerunning a killed stage resumes from the last complete one.
Under `torchrun --nproc_per_node N -m flows train ...` the same entry point trains with
DDP (HF Trainer); only rank 0 writes.
"""

from __future__ import annotations

from tasks.io import write_json
from tasks.selection import candidate_label, selected
from tasks.tracking import is_main_process, stage_run
from tasks.training import train

from .layout import BASE, METRICS, checkpoint_dir, data_dir, train_dir, tune_dir
from .params import Params
from .stage import check_method_listed, stage_flow


@stage_flow("train")
def train_flow(params: Params, task: str, method: str) -> dict:
    check_method_listed(params, method)
    settings = params.stage_settings("train")
    section = settings.pop("train")
    rate, init_scale = selected(tune_dir(method), task, settings.pop("per_task"))
    if init_scale is not None:
        settings["adapter"] = settings["adapter"].model_copy(update={"init_scale": init_scale})
    seeds = section.seed_list()
    logged = {"train": section.to_dict(), "adapter": settings["adapter"].to_dict(), "learning_rate": rate}
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
                # the tune stage's winning run for this task is this very run at the first seed
                reuse=str(tune_dir(method) / candidate_label(rate, init_scale) / task)
                if index == 0
                else None,
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
            f"{task}/{method}: {summary.get('steps', 0)} steps, final loss {summary.get('final_loss', '-')}"
        )
    return summary
