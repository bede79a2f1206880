"""Why zFLoRA trails LoRA on a task: train variants of its initialisation and norm, score on validation.

    python benchmarks/ablation.py --base artifacts/base --data artifacts/data/embedded-summary \
        --seeds 0 1 2 --out docs/results/ablation-embedded-summary-<date>

Needs the pipeline's `base` and `prepare` outputs (run `dvc repro prepare` first). Every variant
trains on the task's training split with the pipeline's train settings (params.yaml `train`,
`adapter`) at the learning rate given per variant, and is scored on the **validation** split
(the test split is never read: these are design diagnostics, not results). Variants:

- `lora`: the reference, PEFT LoRA at `--lora-lr`.
- `zflora`: zFLoRA as shipped (readers N(0, init_scale), writers zero) at `--zflora-lr`.
- `zflora-init=<s>`: readers' init std s instead of adapter.init_scale.
- `zflora-lr=<x>`: the shipped zFLoRA at another learning rate.
- `zflora-writers-random`: LoRA's arrangement mirrored: writers N(0, init_scale), readers zero.
- `zflora-norm-decoupled` (diagnostic only, cannot be fused into a standard RMSNorm): the base
  channels are normalised by the RMS of the base channels alone, so the adapter channels no
  longer shrink them; the adapter channels keep the RMS over all channels.

Besides each variant's validation score it records `adapter_share`: after training, the mean
over every RMSNorm of the adapter channels' share of the stream's energy on validation inputs
(sum a^2 / sum [h;a]^2). That share is how much the norm rescales the base channels away from
what the frozen base saw.

Writes `<out>/ablation.json` and `ablation.md` (per-seed scores, mean [lowest, highest]) and
prints the table. Time: ~20 s per variant and seed on the embedded suite (2 CPU threads).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.params import load_params  # noqa: E402
from tasks.io import read_examples  # noqa: E402
from zflora.harness.data import get_task  # noqa: E402
from zflora.harness.evaluate import build_variants, evaluate_examples, headline_score  # noqa: E402
from zflora.harness.train import train_method  # noqa: E402
from zflora.method import layer as zlayer  # noqa: E402
from zflora.method.atomic import atomic_dir  # noqa: E402


@contextlib.contextmanager
def writers_random(scale: float) -> Iterator[None]:
    """Writers start at N(0, scale) and readers at zero (the reverse of the shipped init)."""
    saved = zlayer.Reader.add, zlayer.Writer.add

    def reader_add(self, name, r, dtype, init_scale, gen):
        self.B[name] = zlayer._new_param((self.base.out_features, r), self.base.weight, dtype, 0.0, gen)

    def writer_add(self, name, r, dtype, init_scale, gen):
        self.A[name] = zlayer._new_param((r, self.base.in_features), self.base.weight, dtype, scale, gen)

    zlayer.Reader.add, zlayer.Writer.add = reader_add, writer_add
    try:
        yield
    finally:
        zlayer.Reader.add, zlayer.Writer.add = saved


@contextlib.contextmanager
def norm_decoupled() -> Iterator[None]:
    """Base channels normalised over themselves (exactly the frozen base's norm); adapter channels
    over the whole stream, as shipped. Not expressible as one RMSNorm: a diagnostic."""
    saved = zlayer.StreamNorm.forward

    def forward(self, hidden_states):
        if hidden_states.shape[-1] == self.d:
            return self.base(hidden_states)
        base = self.base(hidden_states[..., : self.d])
        h = hidden_states.to(torch.float32)
        width = h.shape[-1]
        scale = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps * self.d / width)
        extra = (h[..., self.d :] * scale).to(hidden_states.dtype)
        return torch.cat([base, extra], dim=-1)

    zlayer.StreamNorm.forward = forward
    try:
        yield
    finally:
        zlayer.StreamNorm.forward = saved


def adapter_share(model: torch.nn.Module, tokenizer: Any, prompts: list[str]) -> float | None:
    """Mean over StreamNorm calls of sum(a^2) / sum([h;a]^2) on `prompts` (None: no StreamNorm)."""
    shares: list[float] = []

    def hook(module, args, _output):
        x = args[0].float()
        if x.shape[-1] > module.d:
            shares.append((x[..., module.d :].pow(2).sum() / x.pow(2).sum()).item())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, zlayer.StreamNorm)]
    if not handles:
        return None
    try:
        with torch.no_grad():
            for prompt in prompts:
                model(**tokenizer(prompt, return_tensors="pt"))
    finally:
        for handle in handles:
            handle.remove()
    return sum(shares) / len(shares)


def variants(args: argparse.Namespace, init_scale: float) -> list[tuple[str, str, float, float, Any]]:
    """(label, method, learning rate, readers' init std, context) per variant."""
    out = [
        ("lora", "lora", args.lora_lr, init_scale, contextlib.nullcontext),
        ("zflora", "zflora", args.zflora_lr, init_scale, contextlib.nullcontext),
    ]
    out += [
        (f"zflora-init={s:g}", "zflora", args.zflora_lr, s, contextlib.nullcontext) for s in args.init_scales
    ]
    out += [(f"zflora-lr={x:g}", "zflora", x, init_scale, contextlib.nullcontext) for x in args.extra_lrs]
    out.append(
        ("zflora-writers-random", "zflora", args.zflora_lr, init_scale, lambda: writers_random(init_scale))
    )
    out.append(("zflora-norm-decoupled", "zflora", args.zflora_lr, init_scale, norm_decoupled))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="artifacts/base")
    parser.add_argument("--data", default="artifacts/data/embedded-summary")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lora-lr", type=float, default=0.005)
    parser.add_argument("--zflora-lr", type=float, default=0.01)
    parser.add_argument("--init-scales", type=float, nargs="*", default=[0.005, 0.08])
    parser.add_argument("--extra-lrs", type=float, nargs="*", default=[0.02])
    parser.add_argument("--only", nargs="*", help="run only these variant labels")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    params = load_params(args.params)
    data = Path(args.data)
    train = read_examples(data / "train.jsonl")
    validation = read_examples(data / "validation.jsonl")
    task = get_task(data.name)
    dtype = params.model.dtype
    work = Path(args.out).with_name(Path(args.out).name + ".work")
    rows: list[dict[str, Any]] = []
    start = time.time()
    for label, method, rate, init, context in variants(args, params.adapter.init_scale):
        if args.only and label not in args.only:
            continue
        row: dict[str, Any] = {"variant": label, "method": method, "learning_rate": rate, "scores": {}}
        shares = []
        for seed in args.seeds:
            settings = params.train.with_learning_rate(method, rate, seed)
            adapter = params.adapter.model_copy(update={"init_scale": init})
            out = work / label / str(seed)
            with context():
                metrics = train_method(
                    args.base,
                    train,
                    out,
                    method,
                    settings=settings,
                    adapter=adapter,
                    dtype=dtype,
                    work_dir=work / f".{label}-{seed}.checkpoints",
                    progress=False,
                )
                ((model, tokenizer),) = build_variants(
                    method, args.base, out, dtype, all_forms=False
                ).values()
                scored, _ = evaluate_examples(
                    model,
                    tokenizer,
                    task,
                    validation,
                    params.evaluate.batch_size,
                    params.evaluate.max_new_tokens,
                    False,
                )
                share = adapter_share(model, tokenizer, [e.prompt for e in validation[:16]])
            row["scores"][str(seed)] = round(headline_score(scored, task.metric), 2)
            row["final_loss"] = metrics["final_loss"]
            if share is not None:
                shares.append(share)
            print(
                f"{label} seed {seed}: {row['scores'][str(seed)]} (loss {metrics['final_loss']:.3f}"
                + (f", adapter share {share:.3f})" if share is not None else ")"),
                flush=True,
            )
        values = list(row["scores"].values())
        row.update(
            mean=round(statistics.mean(values), 2),
            low=min(values),
            high=max(values),
            adapter_share=round(statistics.mean(shares), 4) if shares else None,
        )
        rows.append(row)
    shutil.rmtree(work, ignore_errors=True)

    result = {
        "task": data.name,
        "metric": task.metric,
        "split": "validation",
        "examples": len(validation),
        "train_examples": len(train),
        "seeds": args.seeds,
        "r": params.adapter.r,
        "default_init_scale": params.adapter.init_scale,
        "train": params.train.to_dict(),
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}",
        "seconds": round(time.time() - start, 1),
        "command": " ".join(sys.argv),
        "rows": rows,
    }
    lines = [
        f"# Ablation on {data.name} ({'accuracy' if task.metric == 'accuracy' else 'ROUGE-L'}, {len(validation)} validation examples, seeds {args.seeds})",
        "",
        f"r = {params.adapter.r}; {len(train)} training examples; {result['machine']}; {result['seconds']} s.",
        f"Command: `{result['command']}`",
        "",
        "| variant | learning rate | score mean [lowest, highest] | per seed | adapter share of stream energy |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        share = "-" if row["adapter_share"] is None else f"{row['adapter_share']:.3f}"
        lines.append(
            f"| {row['variant']} | {row['learning_rate']:g} | {row['mean']:.1f} [{row['low']:.1f}, "
            f"{row['high']:.1f}] | {', '.join(f'{v:.1f}' for v in row['scores'].values())} | {share} |"
        )
    with atomic_dir(args.out) as tmp:
        (tmp / "ablation.json").write_text(json.dumps(result, indent=2) + "\n")
        (tmp / "ablation.md").write_text("\n".join(lines) + "\n")
        (tmp / "params.yaml").write_text(
            yaml.safe_dump(json.loads(json.dumps(params.model_dump(mode="json"))))
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
