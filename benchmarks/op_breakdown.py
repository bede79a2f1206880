"""Where does a fused zFLoRA model spend its extra time? Time per module kind and op, base vs fused.

    .venv/bin/python benchmarks/op_breakdown.py --preset llama-3.2-1b --layers 4 --threads 1 --pad-multiples 64 128
    .venv/bin/python benchmarks/op_breakdown.py --model /tmp/SmolLM2-135M-Instruct --r 16 --mode prefill \\
        --prompt-length 128 --batch-size 1 --logits last --threads 1 --pad-multiples

Runs greedy decode steps (KV cache) or prefills (one forward over the prompt, KV cache
filled; `--logits last` keeps the logits of the last position only, as generate() and
the profiler do; `--logits all` computes them for every position, as a bare
`model(input_ids)` does) of the base model and of fused models (width r, and padded to
each multiple) under torch.profiler, alternating between the models. Every Linear
(q/k/v/o/gate/up/down projections, LM head), RMSNorm, the embedding and the rotary
embedding is wrapped in a record_function annotation; the table sums the time inside
each module kind (inclusive: its matmul and the Python around it) and, for time
outside those modules, the self time per op (attention, residual adds, ...). Each row
has its time per token (decode) or per prefill in each model, its ratio to the base,
and the ratio of work (weight elements for a Linear, row width for a norm): a time
ratio far above the work ratio points at a kernel that handles that width badly, not
at the extra work. With more than one thread, CPU time is the calling thread's, which
includes waiting for the other threads of a parallel region.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zflora.harness.profiling import ProfileSettings, build_variants  # noqa: E402
from zflora.harness.profiling.measure import CACHE_KW, _cache_of  # noqa: E402

PREFIX = "module::"


def module_kind(name: str, module: nn.Module) -> str | None:
    """The row a module's time goes to: a Linear by its attribute name, norms by class, or None (not annotated)."""
    leaf = name.rsplit(".", 1)[-1]
    if isinstance(module, nn.Linear):
        return leaf
    if isinstance(module, nn.Embedding):
        return "embedding"
    cls = type(module).__name__
    if cls.endswith("RMSNorm"):
        return "final norm" if leaf == "norm" else "rmsnorm (2 per layer)"
    if cls.endswith("RotaryEmbedding"):
        return "rotary embedding"
    return None


@contextlib.contextmanager
def annotated(model: nn.Module) -> Any:
    """Wrap every module of a known kind in a profiler annotation named after its kind (hooks removed on exit)."""
    handles, open_ = [], {}

    def enter(kind: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            ctx = torch.profiler.record_function(PREFIX + kind)
            ctx.__enter__()
            open_[id(module)] = ctx

        return hook

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        open_.pop(id(module)).__exit__(None, None, None)

    for name, module in model.named_modules():
        kind = module_kind(name, module)
        if kind is not None:
            handles.append(module.register_forward_pre_hook(enter(kind)))
            handles.append(module.register_forward_hook(leave))
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


def _totals(prof: torch.profiler.profile, ops: int) -> dict[str, float]:
    """Microseconds per module kind (inclusive) and, outside those modules, self time per op name."""
    totals: dict[str, float] = collections.defaultdict(float)
    outside: dict[str, float] = collections.defaultdict(float)
    for event in prof.events():
        if event.name.startswith(PREFIX):
            totals[event.name[len(PREFIX) :]] += event.cpu_time_total
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith(PREFIX):
            parent = parent.cpu_parent
        if parent is None:
            outside[event.name] += event.self_cpu_time_total
    for rank, (key, value) in enumerate(sorted(outside.items(), key=lambda kv: -kv[1])):
        totals[f"op {key}" if rank < ops else "other ops"] += value
    return totals


def decode_profile(model: nn.Module, prompt: torch.Tensor, tokens: int, ops: int = 8) -> dict[str, float]:
    """Microseconds per row over `tokens` decode steps."""
    from torch.profiler import ProfilerActivity, profile

    out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
    cache, token = _cache_of(out), out.logits[:, -1:].argmax(-1)
    with annotated(model), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(tokens):
            out = model(input_ids=token, use_cache=True, **{CACHE_KW: cache})
            cache, token = _cache_of(out), out.logits[:, -1:].argmax(-1)
    return _totals(prof, ops)


def prefill_profile(model: nn.Module, prompt: torch.Tensor, logits: str, ops: int = 8) -> dict[str, float]:
    """Microseconds per row of one prefill (KV cache filled, argmax of the last position)."""
    from torch.profiler import ProfilerActivity, profile

    keep = {"logits_to_keep": 1} if logits == "last" else {}
    with annotated(model), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(input_ids=prompt, use_cache=True, **keep).logits[:, -1].argmax(-1)
    return _totals(prof, ops)


def work(model: nn.Module) -> dict[str, int]:
    """Per row: weight elements of each Linear kind, row width of the norms (the work that scales with width)."""
    sizes: dict[str, int] = collections.defaultdict(int)
    for name, module in model.named_modules():
        kind = module_kind(name, module)
        if isinstance(module, nn.Linear):
            sizes[kind] += module.weight.numel()
        elif kind is not None and "norm" in kind:
            sizes[kind] = module.weight.numel()
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="llama-3.2-1b")
    parser.add_argument("--model", default=None, help="a local model directory (overrides --preset)")
    parser.add_argument("--layers", type=int, default=None, help="first n layers of a preset (default: all)")
    parser.add_argument("--r", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mode", choices=("decode", "prefill"), default="decode")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--prompt-length", type=int, default=8, help="prompt (prefill) or context (decode)")
    parser.add_argument("--logits", choices=("last", "all"), default="last", help="prefill: logits kept")
    parser.add_argument("--tokens", type=int, default=4, help="decode steps per sample")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument(
        "--ops", type=int, default=8, help="ops outside the modules listed by name (rest: other ops)"
    )
    parser.add_argument("--pad-multiples", type=int, nargs="*", default=[64, 128])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = ProfileSettings(
        preset=args.preset,
        model=args.model,
        layers=None if args.model else args.layers,
        r=args.r,
        variants=("base", "zflora-fused"),
        pad_multiples=tuple(args.pad_multiples),
    )
    started = time.perf_counter()
    with torch.no_grad():
        vs = build_variants(settings, torch.device("cpu"), torch.float32)
        prompt = torch.randint(
            0,
            vs.base.config.vocab_size,
            (args.batch_size, args.prompt_length),
            generator=torch.Generator().manual_seed(0),
        )

        def sample(name: str) -> dict[str, float]:
            if args.mode == "decode":
                return decode_profile(vs.models[name], prompt, args.tokens, args.ops)
            return prefill_profile(vs.models[name], prompt, args.logits, args.ops)

        names = list(vs.models)
        for name in names:  # warm up
            sample(name)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for repeat in range(args.repeats):
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                runs[name].append(sample(name))
    per = 1000 * (
        args.tokens if args.mode == "decode" else 1
    )  # microseconds per sample -> ms per token/prefill
    keys = {k for samples in runs.values() for run in samples for k in run}
    per_unit = {  # median over repeats of each row (a row missing from a sample counts 0)
        name: {k: statistics.median(run.get(k, 0.0) for run in samples) / per for k in keys}
        for name, samples in runs.items()
    }
    for name, samples in runs.items():
        for k in [k for k in keys if not any(k in run for run in samples)]:
            del per_unit[name][k]
    totals = {
        name: statistics.median(sum(run.values()) for run in samples) / per for name, samples in runs.items()
    }
    sizes = {name: work(model) for name, model in vs.models.items()}
    d = vs.base.config.hidden_size
    what = (
        f"decode, batch {args.batch_size}, context {args.prompt_length}: ms per decode token"
        if args.mode == "decode"
        else f"prefill, batch {args.batch_size} x {args.prompt_length} tokens, logits of "
        f"{'the last position' if args.logits == 'last' else 'every position'}: ms per prefill"
    )
    print(
        f"{settings.source} ({vs.base.config.num_hidden_layers} layers), d={d}, r={args.r}, "
        f"widths {vs.widths}, {args.threads} thread(s), torch {torch.__version__}, {args.repeats} repeats "
        f"({time.perf_counter() - started:.0f} s); {what}; CPU time, median over repeats (total: median of the totals)"
    )
    header = " | ".join(f"{n} ms (x base) [work]" for n in names[1:])
    print(f"\n| row | base ms | {header} |")
    print("|---|---|" + "---|" * (len(names) - 1))
    for key in sorted(keys, key=lambda k: -per_unit["base"].get(k, 0.0)):
        base = per_unit["base"].get(key, float("nan"))
        cells = [f"{base:.2f}"]
        for name in names[1:]:
            value = per_unit[name].get(key, float("nan"))
            ratio = sizes[name].get(key, 0) / sizes["base"][key] if sizes["base"].get(key) else None
            times = f"x{value / base:.3f}" if base > 0 else "-"  # nan (missing) prints as nan
            cells.append(f"{value:.2f} ({times})" + (f" [{ratio:.3f}]" if ratio else ""))
        print(f"| {key} | " + " | ".join(cells) + " |")
    cells = [f"{totals['base']:.2f}"] + [
        f"{totals[n]:.2f} (x{totals[n] / totals['base']:.3f})" for n in names[1:]
    ]
    print("| total | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
