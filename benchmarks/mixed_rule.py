"""Where MultiTaskModel should pack rows of several tasks into mixed batches, and where group them.

    .venv/bin/python benchmarks/mixed_rule.py                          # tiny + SmolLM2-135M shapes (~20 min)
    .venv/bin/python benchmarks/mixed_rule.py --shapes tiny --ks 4 8   # a quick look
    .venv/bin/python benchmarks/mixed_rule.py --parts overhead         # only the cost of mixing one batch
    .venv/bin/python benchmarks/mixed_rule.py --parts profile --shapes smollm2-135m   # where a mixed step's time goes

For K tasks with the same number of rows each (1, 4, 8, 15, 16, 17, ...), in batches of at most B:
`grouped` runs each task's rows in batches of its own (a swap, the plain fused model),
`packed` runs the task-sorted rows cut into batches of B (several tasks per batch: one pass
with per-row adapters). Both run through `MultiTaskModel.generate` on the same random
model and prompts, interleaved, on this process's CPU time (one thread). The table gives
each plan's time and which plan `plan_batches(mode="auto")` picks (pack when that needs
fewer batches), and whether that was the faster one. `overhead`: one batch of B rows
through the plain fused model (one task, swapped in) and through the mixed pass with its
rows split evenly over 1, 2, 4, 8, 16 tasks. `profile`: torch.profiler's top operators of
one decoding step of B rows over 16 tasks (plain fused step for comparison). Writes
results/mixed-rule-<date>.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from serving import SHAPES, machine, tokenizer_for  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TIE = 0.05
GRID = {  # rows per task x tasks, and the stream per shape (the SmolLM2 shape costs ~50x more per row)
    "tiny": dict(
        ks=[2, 4, 8, 16, 32], rows=[1, 2, 4, 8, 15, 16, 17], new_tokens=16, repeats=5, overhead_repeats=7
    ),
    "smollm2-135m": dict(
        ks=[2, 8, 16], rows=[1, 4, 8, 15, 16, 17], new_tokens=4, repeats=1, overhead_repeats=3
    ),
}


def build(shape: str, k: int, r: int, seed: int, tmp: Path) -> Any:
    """A random model of the shape, K random zFLoRA adapters, as a MultiTaskModel."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import zflora

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=512, bos_token_id=None, eos_token_id=None)
    torch.manual_seed(seed)
    base = LlamaForCausalLM(config).eval()
    base.generation_config.eos_token_id = None
    tokenizer = tokenizer_for(config.vocab_size, tmp)
    zm = zflora.get_zflora_model(base, zflora.ZFLoRAConfig(r=r), adapter_name="task0")
    generator = torch.Generator().manual_seed(seed + 1)
    adapters = {}
    for i in range(k):
        if i:
            zm.add_adapter(f"task{i}", zflora.ZFLoRAConfig(r=r))
            zm.set_adapter(f"task{i}")
        with torch.no_grad():
            for tensor in zm.adapter_state_dict().values():
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.02)
        adapters[f"task{i}"] = zm.adapter_weights(f"task{i}")
    return zflora.MultiTaskModel(zm.fuse("task0"), adapters, tokenizer)


def measure(mt: Any, k: int, per_task: int, args: Any, new_tokens: int, repeats: int, vocab: int) -> dict:
    from zflora.method.multitask import plan_batches

    rng = random.Random(args.seed + k * 1000 + per_task)
    tasks = [f"task{i}" for i in range(k) for _ in range(per_task)]
    rng.shuffle(tasks)
    prompts = [" ".join(f"w{rng.randrange(2, vocab)}" for _ in range(rng.randint(4, 16))) for _ in tasks]
    plans = {mode: plan_batches(tasks, args.batch_size, mode=mode) for mode in ("grouped", "packed")}
    times: dict[str, list[float]] = {mode: [] for mode in plans}
    for repeat in range(repeats + 1):  # the first round warms up
        for mode in plans if repeat % 2 else reversed(plans):
            start = time.process_time()
            for rows in plans[mode]:
                mt.generate([prompts[i] for i in rows], [tasks[i] for i in rows], new_tokens, args.batch_size)
            if repeat:
                times[mode].append(time.process_time() - start)
    auto = "grouped" if plan_batches(tasks, args.batch_size) == plans["grouped"] else "packed"
    median = {mode: statistics.median(values) for mode, values in times.items()}
    faster = min(median, key=median.get)
    return {
        "k": k,
        "rows_per_task": per_task,
        "rows": len(tasks),
        "batches": {mode: len(plan) for mode, plan in plans.items()},
        "seconds": median,
        "packed_over_grouped": median["packed"] / median["grouped"],
        "rule": auto,
        "faster": faster,
        "same_plan": plans["grouped"] == plans["packed"],
        # a plan within 5 % of the other is a tie (the noise of identical plans): either choice is right
        "rule_right": auto == faster or abs(median["packed"] / median["grouped"] - 1) < TIE,
    }


def overhead(mt: Any, args: Any, new_tokens: int, repeats: int, vocab: int) -> list[dict[str, Any]]:
    """Seconds for one batch of B rows: plain fused (one task) vs mixed with its rows over n tasks."""
    from zflora.method.generation import generate_text

    rng = random.Random(args.seed)
    prompts = [
        " ".join(f"w{rng.randrange(2, vocab)}" for _ in range(rng.randint(4, 16)))
        for _ in range(args.batch_size)
    ]
    counts = [n for n in (1, 2, 4, 8, 16) if n <= min(args.batch_size, len(mt.adapters))]

    def mixed(n: int) -> None:
        tasks = [f"task{i * n // args.batch_size}" for i in range(args.batch_size)]
        mt.use(None)
        with mt.mixed.rows(tasks):
            generate_text(mt.model, mt.tokenizer, prompts, new_tokens, args.batch_size)

    cases = {"plain": lambda: mt.generate(prompts, "task0", new_tokens, args.batch_size)}
    cases.update({f"mixed-{n}": (lambda n=n: mixed(n)) for n in counts})
    times: dict[str, list[float]] = {case: [] for case in cases}
    for repeat in range(repeats + 1):  # the first round warms up
        for case in cases if repeat % 2 else reversed(cases):
            start = time.process_time()
            cases[case]()
            if repeat:
                times[case].append(time.process_time() - start)
    plain = statistics.median(times["plain"])
    rows = []
    for case, values in times.items():
        tasks = 1 if case == "plain" else int(case.split("-")[1])
        seconds = statistics.median(values)
        rows.append({"case": case, "tasks": tasks, "seconds": seconds, "over_plain": seconds / plain})
    return rows


def profile(mt: Any, args: Any, vocab: int) -> dict[str, Any]:
    """torch.profiler's operator table for one decoding step of B rows: plain, and mixed over 16 tasks."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    from transformers import DynamicCache

    rng = random.Random(args.seed)
    ids = torch.tensor([[rng.randrange(2, vocab) for _ in range(12)] for _ in range(args.batch_size)])
    tasks = [f"task{i * 16 // args.batch_size}" for i in range(args.batch_size)]
    out: dict[str, Any] = {}
    for case in ("plain", "mixed-16"):
        mt.use("task0" if case == "plain" else None)
        context = mt.mixed.rows(tasks) if case != "plain" else contextlib.nullcontext()
        with torch.no_grad(), context:
            cache = DynamicCache()
            first = mt.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            step = first.logits[:, -1:].argmax(-1)
            seconds = []
            for _ in range(5):  # decode steps at the same position: drop the step's cache entry each time
                start = time.process_time()
                mt.model(input_ids=step, past_key_values=cache, use_cache=True, logits_to_keep=1)
                seconds.append(time.process_time() - start)
                cache.crop(-1)
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                mt.model(input_ids=step, past_key_values=cache, use_cache=True, logits_to_keep=1)
        out[case] = {
            "step_seconds": statistics.median(seconds),
            "table": prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8),
        }
    return out


def markdown(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    lines = [
        f"# Packed (mixed) vs grouped batches ({m['date_utc']} UTC)",
        "",
        f"`{result['command']}` on {m['cpu']} ({m['cores']} cores), 1 thread, process CPU time, fp32, "
        f"r = {s['r']}, batches of at most {s['batch_size']} rows; torch {m['torch']}, transformers "
        f"{m['transformers']}; prompts of 4-16 tokens.",
    ]
    if result["rows"]:
        lines += [
            "",
            "Each task has the same number of rows, in random order. Rule: pack when packing needs fewer "
            "batches. A difference under 5 % counts as a tie (identical plans differ by that much between runs).",
            "",
            "| shape | K | rows per task | rows | batches grouped / packed | grouped (s) | packed (s) "
            "| packed / grouped | rule picks | faster | rule right |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
    for r in result["rows"]:
        b, t = r["batches"], r["seconds"]
        lines.append(
            f"| {r['shape']} | {r['k']} | {r['rows_per_task']} | {r['rows']} | {b['grouped']} / {b['packed']} | "
            f"{t['grouped']:.2f} | {t['packed']:.2f} | {r['packed_over_grouped']:.2f} | {r['rule']} | "
            f"{'same plan' if r['same_plan'] else r['faster']} | {'yes' if r['rule_right'] else 'NO'} |"
        )
    if result["rows"]:
        right = sum(r["rule_right"] for r in result["rows"])
        lines += ["", f"The rule picked the faster plan (or a tie) in {right} of {len(result['rows'])}."]
    if result["overhead"]:
        lines += [
            "",
            f"## The cost of mixing: one batch of {s['batch_size']} rows",
            "",
            "`plain`: one task, its adapter swapped in, the plain fused model. `mixed-n`: the mixed pass "
            "(per-row adapter hooks) with the rows split evenly over n tasks. Same prompts, interleaved; "
            "median of "
            + ", ".join(f"{g}: {v['overhead_repeats']}" for g, v in s["grid"].items())
            + " runs.",
            "",
            "| shape | case | tasks | seconds | / plain |",
            "|---|---|---|---|---|",
        ]
        for r in result["overhead"]:
            lines.append(
                f"| {r['shape']} | {r['case']} | {r['tasks']} | {r['seconds']:.3f} | {r['over_plain']:.3f} |"
            )
    for shape, cases in result.get("profile", {}).items():
        lines += [
            "",
            f"## One decoding step of {s['batch_size']} rows, {shape} shape: plain vs mixed over 16 tasks",
            "",
        ]
        for case, data in cases.items():
            lines += [
                f"`{case}`: {1e3 * data['step_seconds']:.1f} ms per step (median of 5); torch.profiler, top operators:",
                "",
                "```",
                data["table"].rstrip(),
                "```",
                "",
            ]
    return "\n".join([*lines, ""])


def save(result: dict[str, Any], name: str) -> None:
    """Rewritten after every measurement: a run cut short keeps what it measured."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(result))


def main(argv: list[str] | None = None) -> int:
    import tempfile

    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=list(GRID), choices=list(GRID))
    p.add_argument("--ks", nargs="+", type=int, default=None, help="task counts (default: per shape)")
    p.add_argument("--rows", nargs="+", type=int, default=None, help="rows per task (default: per shape)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--parts", nargs="+", default=["rule", "overhead"], choices=["rule", "overhead", "profile"]
    )
    p.add_argument("--out", default=None, help="results name (default mixed-rule-<date>)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    name = args.out or f"mixed-rule-{dt.date.today().isoformat()}"
    command = "python benchmarks/mixed_rule.py " + " ".join(argv if argv is not None else sys.argv[1:])
    settings = {"batch_size": args.batch_size, "r": args.r, "seed": args.seed, "grid": {}}
    result: dict[str, Any] = {
        "command": command.strip(),
        "machine": machine(),
        "settings": settings,
        "rows": [],
        "overhead": [],
        "profile": {},
    }
    for shape in args.shapes:
        grid = dict(GRID[shape], **{k: v for k, v in (("ks", args.ks), ("rows", args.rows)) if v})
        settings["grid"][shape] = grid
        vocab = SHAPES[shape]["vocab_size"]
        ks = grid["ks"] if "rule" in args.parts else []
        if {"overhead", "profile"} & set(args.parts) and 16 not in ks:
            ks = [*ks, 16]  # the overhead and profile cells need 16 tasks
        for k in ks:
            with tempfile.TemporaryDirectory() as tmp:
                mt = build(shape, k, args.r, args.seed, Path(tmp))
                mt.model.generation_config.eos_token_id = None
                if "overhead" in args.parts and k == 16:
                    for row in overhead(mt, args, grid["new_tokens"], grid["overhead_repeats"], vocab):
                        result["overhead"].append({"shape": shape, **row})
                        print(
                            f"[{shape}] {row['case']}: {row['seconds']:.3f} s, x{row['over_plain']:.3f}",
                            flush=True,
                        )
                    save(result, name)
                if "profile" in args.parts and k == 16:
                    result["profile"][shape] = profile(mt, args, vocab)
                    save(result, name)
                if "rule" not in args.parts or k not in grid["ks"]:
                    continue
                for per_task in grid["rows"]:
                    row = {
                        "shape": shape,
                        **measure(mt, k, per_task, args, grid["new_tokens"], grid["repeats"], vocab),
                    }
                    result["rows"].append(row)
                    print(
                        f"[{shape} K={k} x {per_task}] grouped {row['seconds']['grouped']:.2f} s "
                        f"({row['batches']['grouped']} batches), packed {row['seconds']['packed']:.2f} s "
                        f"({row['batches']['packed']}): rule {row['rule']}, faster {row['faster']}",
                        flush=True,
                    )
                    save(result, name)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
