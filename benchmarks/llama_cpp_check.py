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
cache on both sides, past end-of-turn). Writes nothing; prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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


if __name__ == "__main__":
    main()
