"""Where does a fused zFLoRA model spend its extra time? Per-matrix decode time, base vs fused.

    .venv/bin/python benchmarks/op_breakdown.py --preset llama-3.2-1b --layers 4 --threads 1 --pad-multiples 64 128

Runs greedy decode steps (KV cache, batch 1) of the base model and of fused models
(width r, and padded to each multiple) under torch.profiler, alternating between the
models, and sums self CPU time per matrix-multiply input shape. Each row is one weight
shape class (LM head, q/k/v, o, gate/up, down) with its time per token in each model,
its ratio to the base, and the ratio of bytes it reads: a ratio far above the bytes
ratio points at a kernel that handles that width badly, not at the extra work.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zflora.harness.profiling import ProfileSettings, build_variants  # noqa: E402
from zflora.harness.profiling.measure import CACHE_KW, _cache_of  # noqa: E402

MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"}


def decode_profile(model: torch.nn.Module, prompt: torch.Tensor, tokens: int) -> dict[str, float]:
    """Self CPU microseconds per (op, weight shape) over `tokens` decode steps."""
    from torch.profiler import ProfilerActivity, profile

    out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
    cache, token = _cache_of(out), out.logits[:, -1:].argmax(-1)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(tokens):
            out = model(input_ids=token, use_cache=True, **{CACHE_KW: cache})
            cache, token = _cache_of(out), out.logits[:, -1:].argmax(-1)
    totals: dict[str, float] = collections.defaultdict(float)
    for event in prof.key_averages(group_by_input_shape=True):
        if event.key in MATMUL_OPS:
            # mm/addmm get the weight transposed, last: (in, out); attention bmm/matmul keep their shapes
            shapes = [tuple(s) for s in event.input_shapes if s]
            weight = shapes[-1] if shapes else ()
            label = f"{weight[0]} -> {weight[1]}" if event.key in ("aten::mm", "aten::addmm") else str(weight)
            totals[f"{event.key} {label}"] += event.self_cpu_time_total
        else:
            totals["other ops"] += event.self_cpu_time_total
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="llama-3.2-1b")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--r", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--pad-multiples", type=int, nargs="*", default=[64, 128])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = ProfileSettings(
        preset=args.preset,
        layers=args.layers,
        r=args.r,
        variants=("base", "zflora-fused"),
        pad_multiples=tuple(args.pad_multiples),
    )
    with torch.no_grad():
        vs = build_variants(settings, torch.device("cpu"), torch.float32)
        prompt = torch.randint(
            0, vs.base.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0)
        )
        names = list(vs.models)
        for name in names:  # warm up
            decode_profile(vs.models[name], prompt, 1)
        sums = {name: collections.defaultdict(float) for name in names}
        for repeat in range(args.repeats):
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                for key, value in decode_profile(vs.models[name], prompt, args.tokens).items():
                    sums[name][key] += value
    per_token = {
        name: {k: v / 1000 / (args.tokens * args.repeats) for k, v in s.items()} for name, s in sums.items()
    }
    d = vs.base.config.hidden_size
    print(
        f"{args.preset} ({args.layers} layers), r={args.r}, {args.threads} threads: ms per decode token (self CPU)"
    )
    print(f"widths: {vs.widths}")

    def base_key(key: str) -> str:  # the fused shapes map onto base shapes by replacing d + w with d
        for width in vs.widths.values():
            key = key.replace(str(d + width), str(d))
        return key

    rows = collections.defaultdict(dict)
    for name in names:
        for key, value in per_token[name].items():
            rows[base_key(key)][name] = (value, key)
    header = f"{'matmul (in -> out)':44s}" + "".join(f"{n:>24s}" for n in names)
    print(header)
    totals = collections.defaultdict(float)
    for key in sorted(rows, key=lambda k: -rows[k].get("base", (0, ""))[0]):
        cells = []
        for name in names:
            value, shape_key = rows[key].get(name, (float("nan"), key))
            totals[name] += value if value == value else 0.0
            base_value = rows[key].get("base", (float("nan"), key))[0]
            cells.append(f"{value:9.2f} ({value / base_value:5.3f})")
        print(f"{key:44s}" + "".join(f"{c:>24s}" for c in cells))
    print(
        f"{'total':44s}"
        + "".join(f"{totals[n]:9.2f} ({totals[n] / totals['base']:5.3f})".rjust(24) for n in names)
    )


if __name__ == "__main__":
    main()
