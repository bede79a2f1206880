"""Accuracy evaluation: batched greedy generation for every method, scored per task.

    from zflora.harness.evaluate import evaluate_method
    metrics = evaluate_method(task, "zflora", "models/base", "out/adapter", examples, "out/eval")

Each method is evaluated in every form it is served in: LoRA unmerged and merged, zFLoRA
unfused (training form) and fused. The first form's metrics are the method's headline;
`prediction_agreement` says how often the forms produced the same completion (1.0 for a
lossless fusion). Per-example predictions go to `predictions-<form>.jsonl` next to
`metrics.json`, written atomically. Prompts go through the tokenizer's chat template when
it has one (`zflora.harness.generation.render_prompt`), exactly as in training.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zflora.errors import ZFLoRAError
from zflora.harness.generation import generate_text
from zflora.harness.methods import check_method, load_trained
from zflora.harness.settings import EvaluateSettings, headline_score
from zflora.method.atomic import atomic_dir

# the forms each method is served in; the first is the headline
VARIANTS: dict[str, tuple[str, ...]] = {
    "base": ("base",),
    "lora": ("lora", "lora-merged"),
    "zflora": ("zflora", "zflora-fused"),
    "zflora-mha": ("zflora-mha", "zflora-mha-fused"),
    "fft": ("fft",),
    "lora-eqparams": ("lora-eqparams", "lora-eqparams-merged"),
    "zflora-eqparams": ("zflora-eqparams", "zflora-eqparams-fused"),
}


def build_variants(
    method: str,
    base_path: str | Path,
    artifact_dir: str | Path | None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    all_forms: bool = True,
) -> dict[str, tuple[nn.Module, Any]]:
    """Every serving form of a trained method (or only its headline form):
    {form: (model, tokenizer)}, built one base load each."""
    from zflora.method.loading import load_causal_lm

    check_method(method)
    models: dict[str, tuple[nn.Module, Any]] = {}
    for variant in VARIANTS[method] if all_forms else VARIANTS[method][:1]:
        if method == "fft":
            models[variant] = (
                load_causal_lm(artifact_dir, dtype=dtype, trust_remote_code=trust_remote_code)
                if artifact_dir
                else _missing(method)
            )
            continue
        base, tokenizer = load_causal_lm(base_path, dtype=dtype, trust_remote_code=trust_remote_code)
        if variant.endswith("-fused"):
            zm = load_trained(method, base, artifact_dir)
            models[variant] = (zm.fuse(), tokenizer)
        else:
            models[variant] = (
                load_trained(method, base, artifact_dir, merged=variant.endswith("-merged")),
                tokenizer,
            )
    return models


def _missing(method: str):
    raise ZFLoRAError(f"method {method!r} needs its trained artifact; train it first")


@torch.no_grad()
def evaluate_examples(
    model: nn.Module,
    tokenizer: Any,
    task: Any,
    examples: list[Any],
    batch_size: int = 32,
    max_new_tokens: int | None = None,
    progress: bool = False,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """(metrics, per-example records) for one model on one task's examples."""
    if not examples:
        raise ZFLoRAError(f"task {task.name!r} has no evaluation examples; check its data and the test size")
    model.eval()
    completions = generate_text(
        model,
        tokenizer,
        [e.prompt for e in examples],
        max_new_tokens=max_new_tokens or task.max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        labels=[f"{task.name} example {e.id}" for e in examples],
    )
    metrics = task.score(completions, examples)
    records = []
    for example, completion in zip(examples, completions):
        prediction = task.extract(completion)
        record = {
            "id": example.id,
            "prompt": example.prompt,
            "completion": completion,
            "prediction": prediction,
            "answer": example.answer,
        }
        if task.metric == "accuracy":
            record["correct"] = bool(task.score([completion], [example])["accuracy"] == 1.0)
        records.append(record)
    return metrics, records


def evaluate_method(
    task: Any,
    method: str,
    base_path: str | Path,
    artifact_dir: str | Path | None,
    examples: list[Any],
    out_dir: str | Path,
    settings: EvaluateSettings | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    progress: bool = True,
    all_forms: bool = True,
) -> dict[str, Any]:
    """Evaluate every serving form of `method` (or only its headline form) on `examples`;
    write predictions and metrics.json."""
    settings = settings or EvaluateSettings()
    examples = examples[: settings.limit] if settings.limit else examples
    variants = build_variants(method, base_path, artifact_dir, dtype, trust_remote_code, all_forms)
    per_variant: dict[str, dict[str, float]] = {}
    records: dict[str, list[dict[str, Any]]] = {}
    for name, (model, tokenizer) in variants.items():
        start = time.perf_counter()
        metrics, rows = evaluate_examples(
            model, tokenizer, task, examples, settings.batch_size, settings.max_new_tokens, progress
        )
        per_variant[name] = {**metrics, "seconds": round(time.perf_counter() - start, 2)}
        records[name] = rows
    headline = VARIANTS[method][0]
    completions = [[r["completion"] for r in rows] for rows in records.values()]
    agreement = sum(len(set(column)) == 1 for column in zip(*completions)) / len(examples)
    result = {
        "task": task.name,
        "category": task.category,
        "method": method,
        "metric": task.metric,
        "examples": len(examples),
        **{k: v for k, v in per_variant[headline].items() if k != "seconds"},
        "score": headline_score(per_variant[headline], task.metric),
        "variants": per_variant,
        "prediction_agreement": agreement,
    }
    with atomic_dir(out_dir) as tmp:
        for name, rows in records.items():
            with open(tmp / f"predictions-{name}.jsonl", "w") as handle:
                for row in rows:
                    handle.write(json.dumps(row) + "\n")
        (tmp / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
