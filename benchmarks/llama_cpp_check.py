"""Run an exported GGUF in llama.cpp itself and compare it with the fused checkpoint it came from.

    pip install llama-cpp-python     # builds llama.cpp from source (~15 min on 2 cores); not in make install
    zflora export-gguf --model artifacts/fused/embedded-math --out fused-f32.gguf --dtype f32
    python benchmarks/llama_cpp_check.py --model artifacts/fused/embedded-math \
        --gguf fused-f32.gguf [more.gguf ...] --data artifacts/data/embedded-math/test.jsonl

For each prompt (through the chat template when the tokenizer has one) the token ids from
the checkpoint's own tokenizer go to both runtimes: transformers on the fused checkpoint
(float32) and llama.cpp on each GGUF file (CPU). It reports, per file: whether llama.cpp's
own tokenizer (the one written into the GGUF) produces the same ids for the rendered text;
the largest absolute difference of the last position's logits, next to the largest logit;
and how many of `--tokens` greedy tokens per prompt agree (greedy decoding with the KV
cache on both sides, past end-of-turn). Writes nothing; prints markdown tables.

`--latency BASE.gguf:FUSED.gguf` (repeatable) also times llama.cpp itself on each pair: a
prefill of `--prompt-length` tokens and `--decode-tokens` greedy tokens after it, the two
models interleaved for `--repeats` rounds, medians and the fused/base ratio (export the
base checkpoint with the same `--dtype` as the fused one).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zflora.harness.generation import render_prompt  # noqa: E402
from zflora.method.loading import load_causal_lm  # noqa: E402

DEFAULT_PROMPTS = [
    "Anna has 3 apples. Ben gives Anna 4 more apples. How many apples does Anna have now?",
    "What is the capital of France?",
    "Write one sentence about the sea.",
]


def transformers_run(model, ids: list[int], tokens: int) -> tuple[np.ndarray, list[int]]:
    """Last-position logits of `ids` and `tokens` greedy continuations (KV cache, no stopping)."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), use_cache=True)
        first = out.logits[0, -1].float().numpy().copy()
        past, logits, generated = out.past_key_values, out.logits[0, -1], []
        for _ in range(tokens):
            nxt = int(torch.argmax(logits))
            generated.append(nxt)
            out = model(input_ids=torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
            past, logits = out.past_key_values, out.logits[0, -1]
    return first, generated


def llama_cpp_run(llm, ids: list[int], tokens: int) -> tuple[np.ndarray, list[int]]:
    llm.reset()
    llm.eval(ids)
    first = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    generated = []
    for _ in range(tokens):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        generated.append(nxt)
        llm.eval([nxt])
    return first, generated


def time_pair(llama_cls, paths: list[str], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median prefill ms and decode ms/token of each GGUF in `paths`, interleaved round-robin."""
    models = {
        p: llama_cls(model_path=p, n_ctx=512, logits_all=False, n_threads=args.threads, verbose=False)
        for p in paths
    }
    prompt = [(7 * i + 100) % 1000 + 10 for i in range(args.prompt_length)]  # fixed ordinary token ids
    samples: dict[str, dict[str, list[float]]] = {p: {"prefill": [], "decode": []} for p in paths}
    for round_ in range(args.repeats + 1):  # the first round warms up
        for p in paths if round_ % 2 == 0 else reversed(paths):
            llm = models[p]
            llm.reset()
            start = time.perf_counter()
            llm.eval(prompt)
            prefilled = time.perf_counter()
            for _ in range(args.decode_tokens):
                llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
            done = time.perf_counter()
            if round_:
                samples[p]["prefill"].append(1000 * (prefilled - start))
                samples[p]["decode"].append(1000 * (done - prefilled) / args.decode_tokens)
    return {p: {k: statistics.median(v) for k, v in kinds.items()} for p, kinds in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", required=True, help="the fused checkpoint the GGUF files were exported from"
    )
    parser.add_argument("--gguf", nargs="+", required=True)
    parser.add_argument(
        "--data", help="a jsonl of examples with a 'prompt' field (default: three built-in prompts)"
    )
    parser.add_argument("--prompts", type=int, default=4, help="how many prompts of --data")
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latency", nargs="*", default=[], metavar="BASE:FUSED", help="GGUF pairs to time")
    parser.add_argument("--prompt-length", type=int, default=128)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    try:
        from llama_cpp import Llama
        from llama_cpp import __version__ as llama_version
    except ImportError:
        sys.exit(
            "llama_cpp_check: llama-cpp-python is not installed; pip install llama-cpp-python (builds llama.cpp)"
        )
    torch.set_num_threads(args.threads)

    if args.data:
        lines = Path(args.data).read_text().splitlines()
        prompts = [json.loads(line)["prompt"] for line in lines if line.strip()][: args.prompts]
    else:
        prompts = DEFAULT_PROMPTS
    model, tokenizer = load_causal_lm(args.model, dtype="float32")
    model.eval()
    texts = [render_prompt(tokenizer, p) for p in prompts]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    reference = [transformers_run(model, i, args.tokens) for i in ids]

    print(
        f"fused checkpoint {args.model} (hidden {model.config.hidden_size}, {model.config.num_hidden_layers} layers); "
        f"{len(prompts)} prompts, {args.tokens} greedy tokens each; llama-cpp-python {llama_version}, "
        f"{args.threads} threads, {platform.processor() or platform.machine()}, torch {torch.__version__}"
    )
    print()
    print(
        "| GGUF | size | load | same token ids | max logit difference (largest logit) | greedy tokens agreeing |"
    )
    print("|---|---|---|---|---|---|")
    for path in args.gguf:
        start = time.perf_counter()
        llm = Llama(model_path=path, n_ctx=512, logits_all=True, n_threads=args.threads, verbose=False)
        load_s = time.perf_counter() - start
        same_ids = sum(llm.tokenize(t.encode(), add_bos=False, special=True) == i for t, i in zip(texts, ids))
        diffs, scale, agree = [], [], 0
        for i, (ref_logits, ref_tokens) in zip(ids, reference):
            logits, tokens = llama_cpp_run(llm, i, args.tokens)
            diffs.append(float(np.max(np.abs(logits - ref_logits))))
            scale.append(float(np.max(np.abs(ref_logits))))
            agree += sum(a == b for a, b in zip(tokens, ref_tokens))
        size = os.path.getsize(path) / 2**20
        print(
            f"| {Path(path).name} | {size:.0f} MiB | {load_s:.1f} s | {same_ids}/{len(texts)} | "
            f"{max(diffs):.3g} ({max(scale):.1f}) | {agree}/{len(ids) * args.tokens} |"
        )
        del llm
    if args.latency:
        print()
        print(
            f"llama.cpp latency: prefill of {args.prompt_length} tokens (ms), then {args.decode_tokens} greedy "
            f"tokens (ms per token); median of {args.repeats} interleaved rounds after one warm-up, {args.threads} threads"
        )
        print()
        print("| base | fused | prefill base / fused (ratio) | decode base / fused (ratio) |")
        print("|---|---|---|---|")
    for pair in args.latency:
        base, fused = pair.split(":")
        t = time_pair(Llama, [base, fused], args)
        b, f = t[base], t[fused]
        print(
            f"| {Path(base).name} | {Path(fused).name} | {b['prefill']:.1f} / {f['prefill']:.1f} "
            f"(x{f['prefill'] / b['prefill']:.3f}) | {b['decode']:.2f} / {f['decode']:.2f} (x{f['decode'] / b['decode']:.3f}) |"
        )


if __name__ == "__main__":
    main()
