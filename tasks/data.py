"""The `prepare` stage's task: materialise a task's train, validation and test examples as JSONL.

The validation split (data.validation_size examples) is held out from training: for the
embedded tasks it is the generator's own validation split (prompts disjoint from train and
test), for real tasks the training data after the train_size training examples, minus any
prompt the training part holds. Learning rates are selected on it, so the test split is
only ever read by the final evaluation, and no validation prompt is a training prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from zflora.errors import ZFLoRAError
from zflora.harness.data.suite import get_task
from zflora.method.atomic import atomic_dir

from .io import write_examples
from .tracking import log_json_artifact, log_numeric_metrics


def _options(task_name: str, data_params: dict[str, Any], size: int) -> dict[str, Any]:
    spec = get_task(task_name)
    if spec.source == "embedded":
        return {"n": size, "seed": data_params["seed"]}
    options: dict[str, Any] = {"limit": size}
    if data_params.get("data_dir"):
        options["data_dir"] = str(Path(data_params["data_dir"]) / task_name)
    return options


@task(name="prepare-task-data")
def prepare_task(task_name: str, data_params: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """Write train.jsonl, validation.jsonl and test.jsonl (and stats.json) for one task; returns the stats."""
    import mlflow

    spec = get_task(task_name)
    size, held_out = data_params["train_size"], data_params["validation_size"]
    if spec.source == "embedded":
        # the generator's own validation split: prompts the training split never shows (a
        # carved-off tail of the training pool would repeat training prompts on a task with
        # a small question space, and select for memorisation)
        train = spec.load("train", **_options(task_name, data_params, size))
        validation = spec.load("validation", **_options(task_name, data_params, held_out)) if held_out else []
    else:
        pool = spec.load("train", **_options(task_name, data_params, size + held_out))
        train = pool[:size]
        seen = {e.prompt for e in train}
        validation = [e for e in pool[size:] if e.prompt not in seen]
    if data_params["validation_size"] and not validation:
        raise ZFLoRAError(
            f"task {task_name!r} has only {len(pool)} training examples, none left for validation; "
            "lower data.train_size or data.validation_size in params.yaml"
        )
    try:
        test = spec.load("test", **_options(task_name, data_params, data_params["test_size"]))
    except ZFLoRAError as e:
        if "distinct test examples" not in str(e):
            raise
        raise ZFLoRAError(f"{e}: lower data.test_size in params.yaml") from None
    if not train or not test:
        empty = "train" if not train else "test"
        raise ZFLoRAError(
            f"task {task_name!r} has an empty {empty} split; check its data files or sizes in params.yaml"
        )
    overlap = len({e.prompt for e in test} & {e.prompt for e in train})
    stats = {
        "task": task_name,
        "category": spec.category,
        "metric": spec.metric,
        "source": spec.source,
        "train_examples": len(train),
        "validation_examples": len(validation),
        "test_examples": len(test),
        "test_prompts_seen_in_train": overlap,
        "validation_prompts_seen_in_train": len({e.prompt for e in validation} & {e.prompt for e in train}),
        "mean_prompt_chars": round(sum(len(e.prompt) for e in train) / len(train), 1),
        "mean_target_chars": round(sum(len(e.target) for e in train) / len(train), 1),
    }
    with atomic_dir(out_dir) as tmp:
        write_examples(tmp / "train.jsonl", train)
        write_examples(tmp / "validation.jsonl", validation)
        write_examples(tmp / "test.jsonl", test)
        import json

        (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    log_numeric_metrics(stats)
    log_json_artifact(stats, "stats.json")
    mlflow.log_artifact(str(Path(out_dir) / "test.jsonl"), artifact_path="data")
    return stats
