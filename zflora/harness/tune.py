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
with the best mean score over the tasks wins; ties go to the earlier candidate. The best
candidate of each task on its own validation split is kept too (`per_task`): the train
stage uses it for that task (tune.per_task). `init_scales` adds zFLoRA's readers'
initial std to the grid. A candidate whose loss diverges scores nothing and cannot win.
With one candidate nothing is trained: it is the learning rate, untuned.
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


def candidate_label(rate: float, init_scale: float | None) -> str:
    """How a candidate is named in the scores: '0.005', or '0.005@init=0.08' with an init scale
    (tasks/selection.py reads these names back)."""
    return f"{rate:g}" if init_scale is None else f"{rate:g}@init={init_scale:g}"


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
    init_scales: list[float] | None = None,
    keep_dir: str | Path | None = None,
    jobs: int = 1,
) -> dict[str, Any]:
    """Train `method` at each candidate learning rate (x each of `init_scales`, zFLoRA's
    readers' initial std, when given) on every task of `data` ({task: (train examples,
    validation examples)}) and keep the best on validation: overall (best mean over the
    tasks) and per task (best score on that task's own validation split).

    Returns {method, learning_rate, init_scale, per_task: {task: {learning_rate,
    init_scale, score}}, tuned, candidates, scores: {label: {task: score, mean}},
    diverged: [label, ...], steps, seed}. Trained candidates are deleted from `work_dir`;
    with `keep_dir`, each task's chosen candidates (its own best and the best mean) move to
    `keep_dir/<label>/<task>`: the train stage's first seed is that very run (see
    train_method's `reuse`).

    `jobs` > 1 runs that many trials (candidate x task) at once in worker processes, the
    torch threads split between them: on small models on CPU, where one trial cannot keep
    several cores busy, that is nearly `jobs` times faster. Results are the same up to
    floating-point summation order.
    """
    check_trainable(method)
    if not candidates:
        raise ZFLoRAError(f"no learning-rate candidates for {method}; list at least one")
    settings = settings or TrainSettings()
    adapter = adapter or AdapterSettings()
    grid = [(rate, scale) for rate in candidates for scale in (init_scales or [None])]
    result: dict[str, Any] = {
        "method": method,
        "candidates": [candidate_label(*c) for c in grid],
        "tuned": len(grid) > 1,
        "scores": {},
        "diverged": [],
        "steps": settings.max_steps,
        "seed": settings.seed,
    }
    if len(grid) == 1:
        rate, scale = grid[0]
        chosen = {"learning_rate": rate, "init_scale": scale}
        return {**result, **chosen, "per_task": {task: dict(chosen) for task in data}}
    empty = [task for task, (_, validation) in data.items() if not validation]
    if not data or empty:
        raise ZFLoRAError(
            f"learning-rate selection for {method} needs validation examples"
            + (f" (none for {empty})" if empty else "")
            + "; set data.validation_size > 0 or list a single learning rate"
        )
    evaluate = evaluate or EvaluateSettings()
    work_dir = Path(work_dir)
    common = dict(
        base_path=str(base_path), method=method, settings=settings, adapter=adapter, evaluate=evaluate,
        work_dir=str(work_dir), dtype=dtype, trust_remote_code=trust_remote_code,
    )  # fmt: skip
    if jobs > 1:
        outcomes = _run_parallel(grid, data, common, jobs, progress)
    else:
        outcomes = {}
        for rate, scale in grid:
            for task_name in data:  # a diverged candidate skips its remaining tasks
                outcome = _trial(rate, scale, task_name, data[task_name], progress=progress, **common)
                outcomes[(rate, scale, task_name)] = outcome
                if isinstance(outcome, str):
                    break
    best: tuple[float, float, float | None] | None = None  # (mean score, learning rate, init scale)
    best_per_task: dict[str, dict[str, Any]] = {}
    for rate, scale in grid:
        label = candidate_label(rate, scale)
        found = [(task, outcomes.get((rate, scale, task))) for task in data]
        diverged = [(task, o) for task, o in found if isinstance(o, str)]
        if diverged:
            task_name, why = diverged[0]
            print(f"{method} at {label} on {task_name}: {why}")
            result["diverged"].append(label)
        if keep_dir is None or diverged:
            shutil.rmtree(work_dir / f"lr-{label}", ignore_errors=True)
        if diverged:
            result["scores"][label] = {"mean": None}
            continue
        per_task: dict[str, float] = {task: float(score) for task, score in found}  # type: ignore[arg-type]
        mean = sum(per_task.values()) / len(per_task)
        result["scores"][label] = {**per_task, "mean": round(mean, 2)}
        print(f"{method} at {label}: validation {per_task} (mean {mean:.1f})")
        if best is None or mean > best[0]:
            best = (mean, rate, scale)
        for task_name, score in per_task.items():  # ties go to the earlier candidate
            if task_name not in best_per_task or score > best_per_task[task_name]["score"]:
                best_per_task[task_name] = {"learning_rate": rate, "init_scale": scale, "score": score}
    if best is None or not math.isfinite(best[0]):
        shutil.rmtree(work_dir, ignore_errors=True)
        raise ZFLoRAError(
            f"every learning rate for {method} diverged ({result['candidates']}); list smaller candidates"
        )
    if keep_dir is not None:
        for task_name, chosen in best_per_task.items():
            for label in {
                candidate_label(chosen["learning_rate"], chosen["init_scale"]),
                candidate_label(*best[1:]),
            }:
                kept = Path(keep_dir) / label / task_name
                kept.parent.mkdir(parents=True, exist_ok=True)
                if not kept.exists():
                    shutil.copytree(work_dir / f"lr-{label}" / task_name, kept)
        shutil.rmtree(work_dir, ignore_errors=True)
    return {**result, "learning_rate": best[1], "init_scale": best[2], "per_task": best_per_task}


def _trial(
    rate: float,
    scale: float | None,
    task_name: str,
    examples: tuple[list[Any], list[Any]],
    *,
    base_path: str,
    method: str,
    settings: TrainSettings,
    adapter: AdapterSettings,
    evaluate: EvaluateSettings,
    work_dir: str,
    dtype: str,
    trust_remote_code: bool,
    progress: bool,
) -> float | str:
    """Train one candidate on one task and score it on the task's validation examples: the
    score, or why training diverged."""
    label = candidate_label(rate, scale)
    train, validation = examples
    trial = settings.model_copy(update={"learning_rates": {**settings.learning_rates, method: rate}})
    shape = adapter if scale is None else adapter.model_copy(update={"init_scale": scale})
    out = Path(work_dir) / f"lr-{label}" / task_name
    try:
        train_method(
            base_path,
            train,
            out,
            method,
            settings=trial,
            adapter=shape,
            dtype=dtype,
            work_dir=out.with_name(f".{task_name}.checkpoints"),
            progress=progress,
            trust_remote_code=trust_remote_code,
        )
    except TrainingDiverged as e:
        return str(e)
    spec = get_task(task_name)
    ((model, tokenizer),) = build_variants(
        method, base_path, out, dtype, trust_remote_code, all_forms=False
    ).values()
    metrics, _ = evaluate_examples(
        model, tokenizer, spec, validation, evaluate.batch_size, evaluate.max_new_tokens, progress
    )
    return round(headline_score(metrics, spec.metric), 2)


def _worker_init(threads: int) -> None:
    import torch
    from transformers.utils import logging

    torch.set_num_threads(threads)
    logging.disable_progress_bar()  # the parent's bar counts the trials


def _run_parallel(
    grid: list[tuple[float, float | None]],
    data: dict[str, tuple[list[Any], list[Any]]],
    common: dict[str, Any],
    jobs: int,
    progress: bool,
) -> dict[tuple[float, float | None, str], float | str]:
    """Every trial of the grid in `jobs` worker processes (spawned: the caller may hold
    threads), each with its share of the torch threads."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    import torch
    from tqdm.auto import tqdm

    trials = [(rate, scale, task) for rate, scale in grid for task in data]
    jobs = min(jobs, len(trials))
    threads = max(1, torch.get_num_threads() // jobs)
    outcomes: dict[tuple[float, float | None, str], float | str] = {}
    pool = ProcessPoolExecutor(
        jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init, initargs=(threads,)
    )
    try:
        futures = {
            pool.submit(_trial, rate, scale, task, data[task], progress=False, **common): (rate, scale, task)
            for rate, scale, task in trials
        }
        bar = tqdm(
            total=len(trials),
            desc=f"tune {common['method']} ({jobs} at once)",
            unit="trial",
            disable=not progress,
        )
        for future in as_completed(futures):
            rate, scale, task = futures[future]
            outcomes[(rate, scale, task)] = future.result()
            bar.set_postfix_str(f"{task} at {candidate_label(rate, scale)}: {outcomes[(rate, scale, task)]}")
            bar.update()
        bar.close()
    except BaseException:  # a failed trial or an interrupt: start nothing more
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return outcomes
