"""Multi-task serving: one fused zFLoRA model (grouped swaps, or mixed one-pass batches) vs PEFT
multi-adapter vs K merged models vs one plain fused model.

    .venv/bin/python benchmarks/serving.py                       # tiny + SmolLM2-135M, K = 1 3 8 32, 32 and 128 requests
    .venv/bin/python benchmarks/serving.py --shapes tiny --ks 3 --requests 32  # a quick look
    .venv/bin/python benchmarks/serving.py --threads 2 --clock wall   # a quiet, dedicated machine

A stream of N requests over K tasks (each task drawn at random, seeded) arrives at once
(batch arrival); the server answers them in batches of at most B rows, greedy, exactly
`--new-tokens` new tokens per request (no end-of-sequence token), and these ways of
serving K task adapters are compared on the same base weights and the same stream:

- `zflora`: one fused zFLoRA model (`zflora.MultiTaskModel`), rows grouped by task, the
  adapter swapped in place between groups (preloaded adapters, cached E·P), each group
  generated in batches of B (the only path before mixed batches);
- `zflora-mixed`: the same model serving the stream as `MultiTaskModel.generate` does: the
  batches of `MultiTaskModel.plan` (task-sorted rows packed into batches of B when that
  saves batches, else grouped); a batch of several tasks runs in one pass with per-row
  adapters, a batch of one task swaps its adapter in;
- `peft-mixed`: HF PEFT with all K LoRA adapters loaded (unmerged), the stream in arrival
  order in batches of B, each batch mixed (`generate(..., adapter_names=[...])`);
- `merged-copies`: one merged LoRA model per task (K full copies), rows grouped by task
  (not run where the K copies would pass `--max-copies-gb`);
- `fused`: one plain fused zFLoRA model (task0's adapter) serving the stream in arrival
  order in batches of B, task ignored: at K = 1 the single-task server, at K > 1 a ceiling
  (what the shared GEMMs alone cost; its answers for other tasks are not theirs).

Each method runs in its own process, loading from files (safetensors) written once per
shape. Reported: throughput (generated tokens / s of the whole stream), p50 and p95
latency per request (arrival to the end of the batch that answered it), memory: the
bytes of every tensor the method holds (weights, adapters, cached E·P), the resident set
(RSS after serving minus RSS before loading; includes allocator slack and activations)
and its peak (VmHWM minus the same baseline). Adapter values are random: speed and
memory do not depend on them. Times are this process's CPU time by default (one thread:
what a dedicated core would take; other jobs on a shared machine do not count); `--clock
wall` on a quiet machine. Writes benchmarks/results/serving-<date>.{json,md} and
serving-<date>/<shape>.png.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("zflora", "zflora-mixed", "peft-mixed", "merged-copies", "fused")
LABELS = {
    "zflora": "(a) zFLoRA, grouped swaps",
    "zflora-mixed": "(d) zFLoRA, mixed one-pass batches",
    "peft-mixed": "(b) PEFT, K adapters, mixed batches",
    "merged-copies": "(c) K merged LoRA copies",
    "fused": "(e) one plain fused model",
}


def _shapes() -> dict[str, dict[str, Any]]:
    """LlamaConfig fields of the benchmarked shapes, from the project's own definitions."""
    from zflora.harness.profiling import PRESETS
    from zflora.harness.tinybase import TinyBaseSettings

    tiny = TinyBaseSettings()  # the embedded pipeline's tiny base
    smol = PRESETS["smollm2-135m"]  # SmolLM2-135M's dimensions, random weights
    return {
        "tiny": dict(
            hidden_size=tiny.hidden_size,
            num_hidden_layers=tiny.num_layers,
            num_attention_heads=tiny.num_heads,
            num_key_value_heads=tiny.num_kv_heads,
            intermediate_size=tiny.intermediate_size,
            vocab_size=tiny.vocab_size,
            tie_word_embeddings=tiny.tie_embeddings,
        ),
        "smollm2-135m": dict(
            hidden_size=smol.hidden_size,
            num_hidden_layers=smol.num_hidden_layers,
            num_attention_heads=smol.num_attention_heads,
            num_key_value_heads=smol.num_key_value_heads,
            intermediate_size=smol.intermediate_size,
            vocab_size=smol.vocab_size,
            tie_word_embeddings=smol.tie_word_embeddings,
        ),
    }


SHAPES = _shapes()
# a shape's stream and repeats unless given on the command line
STREAM = {
    "tiny": dict(new_tokens=16, repeats=5),
    "smollm2-135m": dict(new_tokens=8, repeats=1),
}


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident set (VmRSS) or its high-water mark since exec (VmHWM), in MB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def tensors_in(value: Any) -> list[Any]:
    """Every tensor inside nested dicts, lists and tuples."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in tensors_in(item)]
    return []


def tensor_mb(tensors: list[Any]) -> float:
    """Bytes held by these tensors, each storage counted once (tied weights share one)."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values()) / 2**20


def tokenizer_for(vocab_size: int, path: Path) -> Any:
    """A word-level tokenizer (`w<i>` -> i) with a pad token and no end-of-sequence token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab_size)}, unk_token="w1"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="w0", unk_token="w1", padding_side="left")
    fast.save_pretrained(path)
    return fast


def prepare(shape: str, k: int, r: int, seed: int, out: Path) -> None:
    """Base, K zFLoRA adapters (+ the multi-task directory) and K LoRA adapters of that base, on disk."""
    import torch
    from peft import get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    import zflora
    from zflora.harness.methods import AdapterSettings, lora_config

    config = LlamaConfig(
        **SHAPES[shape], max_position_embeddings=512, bos_token_id=None, eos_token_id=None, pad_token_id=0
    )
    torch.manual_seed(seed)
    base = LlamaForCausalLM(config).eval()
    base.generation_config.eos_token_id = None
    base.save_pretrained(out / "base")
    tokenizer = tokenizer_for(config.vocab_size, out / "base")
    generator = torch.Generator().manual_seed(seed + 1)
    lora = lora_config(AdapterSettings(r=r), base)  # the trained baseline: q/k/v/o/gate/up/down, alpha 2r
    lora.init_lora_weights = False
    for i in range(k):
        peft = get_peft_model(
            LlamaForCausalLM.from_pretrained(out / "base"),
            lora,
        )
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
        peft.save_pretrained(out / "lora" / f"task{i}")
    zm = zflora.get_zflora_model(base, zflora.ZFLoRAConfig(r=r), adapter_name="task0")
    for i in range(k):
        if i:
            zm.add_adapter(f"task{i}", zflora.ZFLoRAConfig(r=r))
            zm.set_adapter(f"task{i}")
        with torch.no_grad():
            for tensor in zm.adapter_state_dict().values():
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.02)
        zm.save_adapter(out / "zflora" / f"task{i}", adapter_name=f"task{i}")
    fused = zm.fuse("task0")
    adapters = {f"task{i}": out / "zflora" / f"task{i}" for i in range(k)}
    zflora.MultiTaskModel(fused, adapters, tokenizer).save(out / "multitask")


def stream(k: int, n: int, lengths: tuple[int, int], vocab: int, seed: int) -> list[tuple[str, str]]:
    """N (prompt, task) requests: random task of K, random prompt of random length (seeded)."""
    rng = random.Random(seed)
    return [
        (
            " ".join(f"w{rng.randrange(2, vocab)}" for _ in range(rng.randint(*lengths))),
            f"task{rng.randrange(k)}",
        )
        for _ in range(n)
    ]


def grouped(requests: list[tuple[str, str]]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, (_, task) in enumerate(requests):
        groups.setdefault(task, []).append(i)
    return groups


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Load one method from `spec['dir']`, serve the stream `spec['repeats']` times, measure."""
    import torch

    torch.set_num_threads(spec["threads"])
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from zflora.harness.generation import generate_text
    from zflora.method.fusion import swap_adapter
    from zflora.method.loading import load_causal_lm, load_tokenizer
    from zflora.method.multitask import MultiTaskModel

    method, k, root = spec["method"], spec["k"], Path(spec["dir"])
    batch, new_tokens = spec["batch_size"], spec["new_tokens"]
    requests = [tuple(x) for x in spec["requests"]]
    tasks = [f"task{i}" for i in range(k)]
    import transformers.models.llama.modeling_llama  # noqa: F401  (imports are not model memory)
    from peft.tuners import lora  # noqa: F401

    load_tokenizer(root / "base")
    before = rss_mb()
    load_start = time.perf_counter()
    with torch.no_grad():
        if method in ("zflora", "zflora-mixed"):
            mt = MultiTaskModel.from_directory(root / "multitask")
            mt.model.generation_config.eos_token_id = None
            tokenizer = mt.tokenizer
        elif method == "fused":  # the plain fused model with task0's adapter, nothing else held
            fused, tokenizer = load_causal_lm(root / "multitask" / "base")
            swap_adapter(fused, root / "zflora" / "task0")
            fused.requires_grad_(False).eval()
            fused.generation_config.eos_token_id = None
        else:
            tokenizer = load_tokenizer(root / "base")

            def load_base():
                model = AutoModelForCausalLM.from_pretrained(root / "base", use_safetensors=True).eval()
                model.generation_config.eos_token_id = None
                return model

            if method == "peft-mixed":
                peft = PeftModel.from_pretrained(load_base(), root / "lora" / "task0", adapter_name="task0")
                for task in tasks[1:]:
                    peft.load_adapter(root / "lora" / task, adapter_name=task)
                peft.eval()
            else:
                copies = {
                    task: PeftModel.from_pretrained(load_base(), root / "lora" / task)
                    .merge_and_unload()
                    .eval()
                    for task in tasks
                }
    load_s = time.perf_counter() - load_start
    if method == "fused":
        tensors = [*fused.state_dict().values()]
    elif method in ("zflora", "zflora-mixed"):
        tensors = [*mt.model.state_dict().values()]
        for weights in mt.adapters.values():
            tensors += [*weights.tensors.values()]
            tensors += tensors_in(weights.cache)  # what swap_adapter caches (E·P, ...)
    elif method == "peft-mixed":
        tensors = [*peft.state_dict().values()]  # the base and all K adapters
    else:
        tensors = [t for model in copies.values() for t in model.state_dict().values()]
    weights_mb = tensor_mb(tensors)

    def mixed_batch(rows: list[int]) -> None:
        encoded = tokenizer([requests[i][0] for i in rows], return_tensors="pt", padding=True)
        output = peft.generate(
            **encoded,
            adapter_names=[requests[i][1] for i in rows],
            max_new_tokens=new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=None,
            use_cache=True,
        )
        assert output.shape[1] - encoded["input_ids"].shape[1] == new_tokens

    clock = time.process_time if spec["clock"] == "cpu" else time.perf_counter

    def serve(reqs: list[tuple[str, str]]) -> list[float]:
        """Answer every request; the latency of each (s since the stream arrived, on `clock`)."""
        done = [0.0] * len(reqs)
        start = clock()
        if method in ("peft-mixed", "fused"):  # arrival order
            for first in range(0, len(reqs), batch):
                rows = list(range(first, min(first + batch, len(reqs))))
                if method == "fused":
                    prompts = [reqs[i][0] for i in rows]
                    generate_text(fused, tokenizer, prompts, max_new_tokens=new_tokens, batch_size=batch)
                else:
                    mixed_batch(rows)
                for i in rows:
                    done[i] = clock() - start
            return done
        if method == "zflora-mixed":  # MultiTaskModel.generate's own batches, timed one by one
            for rows in mt.plan([task for _, task in reqs], batch):
                mt.generate(
                    [reqs[i][0] for i in rows],
                    [reqs[i][1] for i in rows],
                    max_new_tokens=new_tokens,
                    batch_size=batch,
                )
                for i in rows:
                    done[i] = clock() - start
            return done
        groups = grouped(reqs)
        if method == "zflora":  # MultiTaskModel's order: the active task's group first
            order = sorted(groups, key=lambda t: t != mt.active)
        else:
            order = list(groups)
        for task in order:
            rows = groups[task]
            for first in range(0, len(rows), batch):
                chunk = rows[first : first + batch]
                prompts = [reqs[i][0] for i in chunk]
                if method == "zflora":  # swaps in place when the task changes
                    mt.generate(prompts, [task] * len(chunk), max_new_tokens=new_tokens, batch_size=batch)
                else:
                    generate_text(
                        copies[task], tokenizer, prompts, max_new_tokens=new_tokens, batch_size=batch
                    )
                for i in chunk:
                    done[i] = clock() - start
        return done

    serve(requests[: min(4, len(requests))])  # warm-up: first calls, E·P already cached at load
    runs = []
    for _ in range(spec["repeats"]):
        wall = time.perf_counter()
        latencies = serve(requests)
        wall = time.perf_counter() - wall
        total = max(latencies)
        runs.append(
            {
                "seconds": total,
                "wall_seconds": wall,
                "tokens_per_s": len(requests) * new_tokens / total,
                "p50_s": statistics.median(latencies),
                "p95_s": sorted(latencies)[max(0, int(round(0.95 * len(latencies))) - 1)],
            }
        )
    resident = rss_mb() - before  # after serving: every weight page has been touched
    best = sorted(runs, key=lambda x: x["tokens_per_s"])[len(runs) // 2]  # the median run by throughput
    return {
        "method": method,
        "k": k,
        "requests": len(requests),
        "load_s": load_s,
        "resident_mb": resident,
        "weights_mb": weights_mb,
        "peak_mb": rss_mb("VmHWM") - before,
        "baseline_rss_mb": before,
        "runs": runs,
        **{key: best[key] for key in ("tokens_per_s", "p50_s", "p95_s", "seconds")},
    }


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(spec, handle)
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--worker", handle.name],
            capture_output=True,
            text=True,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"},
        )
    finally:
        os.unlink(handle.name)
    if out.returncode != 0:
        raise RuntimeError(f"{spec['method']} K={spec['k']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> dict[str, Any]:
    import peft
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
    }


def _by(rows: list[dict[str, Any]]) -> dict[tuple[str, int, int], dict[str, dict[str, Any]]]:
    """{(shape, K, requests): {method: row}} in run order."""
    table: dict[tuple[str, int, int], dict[str, dict[str, Any]]] = {}
    for r in rows:
        table.setdefault((r["shape"], r["k"], r["requests"]), {})[r["method"]] = r
    return table


def _ran(row: dict[str, Any] | None) -> bool:
    return row is not None and "tokens_per_s" in row


def checks(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for (shape, k, n), by in _by(rows).items():
        where = f"- {shape}, K={k}, {n} requests"
        for method in ("zflora-mixed", "zflora"):
            if _ran(by.get(method)) and _ran(by.get("peft-mixed")):
                ratio = by[method]["tokens_per_s"] / by["peft-mixed"]["tokens_per_s"]
                verdict = "meets" if ratio >= 1.0 else "DOES NOT meet"
                lines.append(
                    f"{where}: {method} / PEFT mixed-batch throughput = {ratio:.2f} ({verdict} '>= 1')"
                )
        if _ran(by.get("zflora-mixed")) and _ran(by.get("fused")):
            ratio = by["zflora-mixed"]["tokens_per_s"] / by["fused"]["tokens_per_s"]
            if k == 1:
                verdict = "meets" if ratio >= 0.95 else "DOES NOT meet"
                lines.append(f"{where}: zflora-mixed / plain fused = {ratio:.3f} ({verdict} 'within 5 %')")
            else:
                lines.append(f"{where}: zflora-mixed / plain fused (one task, a ceiling) = {ratio:.3f}")
        if _ran(by.get("zflora-mixed")) and _ran(by.get("merged-copies")):
            weights = by["zflora-mixed"]["weights_mb"] / by["merged-copies"]["weights_mb"]
            rss = by["zflora-mixed"]["resident_mb"] / by["merged-copies"]["resident_mb"]
            lines.append(
                f"{where}: zFLoRA memory / K merged copies = {weights:.3f} in weights, "
                f"{rss:.3f} in resident memory (1/K = {1 / k:.3f})"
            )
    return lines


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    s = result["settings"]
    lines = [
        f"# Multi-task serving ({m['date_utc']} UTC)",
        "",
        f"`{result['command']}` on {m['cpu']} ({m['cores']} cores, load average at start "
        f"{m['load_average'][0]:.1f}), {s['threads']} thread(s), {s['clock']} clock, fp32; torch {m['torch']}, "
        f"transformers {m['transformers']}, peft {m['peft']}.",
        f"Requests arrive at once (batch arrival), each of a random task of K; prompts of "
        f"{s['prompt_lengths'][0]}-{s['prompt_lengths'][1]} tokens; batches of at most {s['batch_size']} rows; "
        f"r = {s['r']}; "
        + "; ".join(
            f"{shape}: {' and '.join(map(str, v['requests']))} requests x {v['new_tokens']} new tokens, "
            f"median of {v['repeats']} run(s)"
            for shape, v in s["streams"].items()
        )
        + ". Ratios: throughput over PEFT mixed batches (b) and over the plain fused model (e) of the same "
        "row group.",
        "",
        "| shape | K | requests | method | tokens/s | / PEFT | / fused | p50 latency (s) | p95 latency (s) "
        "| weights (MB) | resident memory (MB) | peak resident (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (shape, k, n), by in _by(result["rows"]).items():
        for method in METHODS:
            r = by.get(method)
            if r is None:
                continue
            if not _ran(r):
                lines.append(
                    f"| {shape} | {k} | {n} | {LABELS[method]} | not run: {r['skipped']} |{' |' * 7}"
                )
                continue
            ratios = [
                f"{r['tokens_per_s'] / by[ref]['tokens_per_s']:.2f}" if _ran(by.get(ref)) else "-"
                for ref in ("peft-mixed", "fused")
            ]
            lines.append(
                f"| {shape} | {k} | {n} | {LABELS[method]} | {r['tokens_per_s']:.1f} | {ratios[0]} | {ratios[1]} | "
                f"{r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['weights_mb']:.1f} | {r['resident_mb']:.0f} | "
                f"{r['peak_mb']:.0f} |"
            )
    return "\n".join([*lines, "", "Checks:", "", *result["checks"], ""])


def plot(result: dict[str, Any], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for shape in dict.fromkeys(r["shape"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["shape"] == shape and _ran(r)]
        cells = list(dict.fromkeys((r["k"], r["requests"]) for r in rows))
        fig, axes = plt.subplots(1, 3, figsize=(4.5 * 3, 3.8))
        width = 0.8 / len(METHODS)
        for j, method in enumerate(METHODS):
            values = {(r["k"], r["requests"]): r for r in rows if r["method"] == method}
            xs = [i + (j - (len(METHODS) - 1) / 2) * width for i in range(len(cells))]
            for ax, key in zip(axes, ("tokens_per_s", "p95_s", "weights_mb")):
                ax.bar(xs, [values[c][key] if c in values else 0 for c in cells], width, label=method)
        for ax, title in zip(
            axes, ("throughput (tokens/s)", "p95 latency per request (s)", "weights held (MB)")
        ):
            ax.set_xticks(range(len(cells)), [f"K={k}\n{n} req" for k, n in cells], fontsize=7)
            ax.set_title(title)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"multi-task serving, {shape} shape ({result['settings']['clock']} clock)")
        fig.tight_layout()
        path = folder / f"{shape}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def copies_gb(shape: str, k: int) -> float:
    """What K merged fp32 copies of the shape's model weigh (GB)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[shape])
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return k * sum(p.numel() for p in model.parameters()) * 4 / 1e9


def write(result: dict[str, Any], name: str) -> None:
    """The JSON and Markdown results, rewritten after every row: a run cut short keeps what it measured."""
    result["checks"] = checks(result["rows"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(result))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--ks", nargs="+", type=int, default=[1, 3, 8, 32])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--requests", nargs="+", type=int, default=[32, 128], help="requests in the stream")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=None, help="new tokens per request (default: per shape)")
    p.add_argument("--prompt-lengths", nargs=2, type=int, default=[4, 16])
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--repeats", type=int, default=None, help="timed runs of the stream (default: per shape)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-copies-gb",
        type=float,
        default=8.0,
        help="skip merged-copies where K fp32 copies of the model would weigh more (SmolLM2 at K=32: 17 GB)",
    )
    p.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="cpu: this process's CPU time (one thread: what a dedicated core would take; other jobs on a "
        "shared machine do not count); wall: elapsed time (a quiet machine)",
    )
    p.add_argument("--out", default=None, help="results name (default serving-<date>)")
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(Path(args.worker).read_text()))))
        return 0
    name = args.out or f"serving-{dt.date.today().isoformat()}"
    command = "python benchmarks/serving.py " + " ".join(argv if argv is not None else sys.argv[1:])
    started = time.monotonic()
    settings: dict[str, Any] = {
        "batch_size": args.batch_size,
        "prompt_lengths": args.prompt_lengths,
        "r": args.r,
        "threads": args.threads,
        "clock": args.clock,
        "seed": args.seed,
        "streams": {},
    }
    result: dict[str, Any] = {
        "command": command.strip(),
        "machine": machine(),
        "settings": settings,
        "rows": [],
    }
    for shape in args.shapes:
        vocab = SHAPES[shape]["vocab_size"]
        run = {key: getattr(args, key) or value for key, value in STREAM[shape].items()}
        settings["streams"][shape] = {"requests": args.requests, **run}
        for k in args.ks:
            with tempfile.TemporaryDirectory(prefix=f"zflora-serving-{shape}-") as tmp:
                t0 = time.monotonic()
                prepare(shape, k, args.r, args.seed, Path(tmp))
                print(f"[{shape} K={k}] prepared in {time.monotonic() - t0:.0f} s", flush=True)
                for n in args.requests:
                    # seeded by K as before: the first 32 requests of 128 are the 32-request stream
                    requests = stream(k, n, tuple(args.prompt_lengths), vocab, args.seed + k)
                    for method in args.methods:
                        where = f"[{shape} K={k} N={n}] {method:>13}"
                        if method == "merged-copies" and copies_gb(shape, k) > args.max_copies_gb:
                            skipped = f"{k} copies need {copies_gb(shape, k):.0f} GB (--max-copies-gb {args.max_copies_gb:g})"
                            result["rows"].append(
                                {"shape": shape, "method": method, "k": k, "requests": n, "skipped": skipped}
                            )
                            print(f"{where}: not run, {skipped}", flush=True)
                            continue
                        spec = {
                            "method": method,
                            "k": k,
                            "dir": tmp,
                            "requests": requests,
                            "batch_size": args.batch_size,
                            "new_tokens": run["new_tokens"],
                            "repeats": run["repeats"],
                            "threads": args.threads,
                            "clock": args.clock,
                        }
                        row = {"shape": shape, **run_worker(spec)}
                        result["rows"].append(row)
                        result["seconds"] = time.monotonic() - started
                        write(result, name)
                        print(
                            f"{where}: {row['tokens_per_s']:7.1f} tokens/s, "
                            f"p50 {row['p50_s']:.2f} s, p95 {row['p95_s']:.2f} s, weights {row['weights_mb']:.1f} MB, "
                            f"resident {row['resident_mb']:.0f} MB "
                            f"(load {row['load_s']:.1f} s)",
                            flush=True,
                        )
    result["seconds"] = time.monotonic() - started
    write(result, name)
    pngs = plot(result, RESULTS / name)
    print(markdown(result))
    print(f"wrote {RESULTS / f'{name}.json'}, {RESULTS / f'{name}.md'}, {', '.join(map(str, pngs))}")
    print(f"total {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
