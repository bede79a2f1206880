"""Learning-rate selection on a validation split: the test split is never read.

    from zflora.harness.tune import select_learning_rate
    result = select_learning_rate(
        "models/base", "zflora", [5e-3, 1e-2, 2e-2],
        {"embedded-math": (train_examples, validation_examples)},
        settings=TrainSettings(max_steps=60), work_dir="work/tune/zflora",
    )
    result["learning_rate"]   # the candidate with the best mean validation score

Each candidate trains the method on each task's training examples with the same settings
(only the learning rate differs), is scored on that task's validation examples in its
training form (greedy decoding, the task's own metric, in percent), and the candidate
with the best mean score over the tasks wins; ties go to the earlier candidate. A
candidate whose loss diverges scores nothing and cannot win. With one candidate nothing
is trained: it is the learning rate, untuned.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

from zflora.errors import ZFLoRAError
from zflora.harness.data.suite import get_task
from zflora.harness.evaluate import EvaluateSettings, build_variants, evaluate_examples, headline_score
from zflora.harness.methods import AdapterSettings
from zflora.harness.train import TrainingDiverged, TrainSettings, check_trainable, train_method


def select_learning_rate(
    base_path: str | Path,
    method: str,
    candidates: list[float],
    data: dict[str, tuple[list[Any], list[Any]]],
    settings: TrainSettings | None = None,
    adapter: AdapterSettings | None = None,
    evaluate: EvaluateSettings | None = None,
    work_dir: str | Path = "work/tune",
    dtype: str = "float32",
    trust_remote_code: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train `method` at each candidate learning rate on every task of `data`
    ({task: (train examples, validation examples)}) and keep the best on validation.

    Returns {method, learning_rate, tuned, candidates, scores: {lr: {task: score, mean}},
    diverged: [lr, ...], steps, seed}. Trained candidates are deleted from `work_dir`.
    """
    check_trainable(method)
    if not candidates:
        raise ZFLoRAError(f"no learning-rate candidates for {method}; list at least one")
    settings = settings or TrainSettings()
    result: dict[str, Any] = {
        "method": method,
        "candidates": list(candidates),
        "tuned": len(candidates) > 1,
        "scores": {},
        "diverged": [],
        "steps": settings.max_steps,
        "seed": settings.seed,
    }
    if len(candidates) == 1:
        return {**result, "learning_rate": candidates[0]}
    empty = [task for task, (_, validation) in data.items() if not validation]
    if not data or empty:
        raise ZFLoRAError(
            f"learning-rate selection for {method} needs validation examples"
            + (f" (none for {empty})" if empty else "")
            + "; set data.validation_size > 0 or list a single learning rate"
        )
    evaluate = evaluate or EvaluateSettings()
    work_dir = Path(work_dir)
    best: tuple[float, float] | None = None  # (mean score, learning rate)
    for rate in candidates:
        per_task: dict[str, float] = {}
        trial = settings.model_copy(update={"learning_rates": {**settings.learning_rates, method: rate}})
        for task_name, (train, validation) in data.items():
            out = work_dir / f"lr-{rate:g}" / task_name
            try:
                train_method(
                    base_path,
                    train,
                    out,
                    method,
                    settings=trial,
                    adapter=adapter,
                    dtype=dtype,
                    work_dir=out.with_name(f".{task_name}.checkpoints"),
                    progress=progress,
                    trust_remote_code=trust_remote_code,
                )
            except TrainingDiverged as e:
                print(f"{method} at learning rate {rate:g} on {task_name}: {e}")
                result["diverged"].append(rate)
                break
            spec = get_task(task_name)
            ((model, tokenizer),) = build_variants(
                method, base_path, out, dtype, trust_remote_code, all_forms=False
            ).values()
            metrics, _ = evaluate_examples(
                model, tokenizer, spec, validation, evaluate.batch_size, evaluate.max_new_tokens, progress
            )
            per_task[task_name] = round(headline_score(metrics, spec.metric), 2)
            del model
        shutil.rmtree(work_dir / f"lr-{rate:g}", ignore_errors=True)
        if rate in result["diverged"]:
            result["scores"][f"{rate:g}"] = {"mean": None}
            continue
        mean = sum(per_task.values()) / len(per_task)
        result["scores"][f"{rate:g}"] = {**per_task, "mean": round(mean, 2)}
        print(f"{method} at learning rate {rate:g}: validation {per_task} (mean {mean:.1f})")
        if best is None or mean > best[0]:
            best = (mean, rate)
    if best is None or not math.isfinite(best[0]):
        raise ZFLoRAError(
            f"every learning rate for {method} diverged ({candidates}); list smaller candidates"
        )
    return {**result, "learning_rate": best[1]}
