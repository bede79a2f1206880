"""Does how the base model holds its weights change its speed? (Two biases the profiler now removes.)

    .venv/bin/python benchmarks/base_memory.py --model /tmp/SmolLM2-135M-Instruct --mode decode --batch-size 4 --repeats 15
    .venv/bin/python benchmarks/base_memory.py --model /tmp/SmolLM2-135M-Instruct --mode prefill --batch-size 4 \\
        --prompt-length 32 --repeats 15

Times one base model loaded from a directory (load_causal_lm) in three states,
interleaved round-robin, ratios to the first with paired bootstrap intervals:

- mapped, frozen: as from_pretrained leaves it on CPU (weights in a private mapping of
  the safetensors file), parameters frozen the way PEFT and ZFLoRAModel freeze the base
  they wrap (the profiler's base before this change);
- copied, frozen: the same weights copied into process memory (what every variant built
  by copying, merged LoRA's layers and the fused model, reads);
- copied, requires grad: as a freshly built fused model was timed before this change.

Also times the LM head alone on what logits_to_keep=1 hands it (the last position of a
(b, L, d) stream: a non-contiguous (b, 1, d) view): torch.matmul folds it into one GEMM
only when the weight requires grad, else it runs b GEMVs. Since the profiler copies a
loaded base into process memory and freezes every timed model, all variants read the
same kind of memory and take the same kernels.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import add_cell_args, describe_cell, print_ratios  # noqa: E402

from zflora.harness.profiling import round_robin  # noqa: E402
from zflora.harness.profiling.measure import decode_sampler, prefill_sampler  # noqa: E402
from zflora.harness.profiling.timing import Clock  # noqa: E402
from zflora.harness.profiling.variants import share_weights  # noqa: E402
from zflora.method.loading import load_causal_lm  # noqa: E402


def mapped_fraction(model: nn.Module) -> float:
    """Share of parameter bytes inside a mapping of a .safetensors file (Linux /proc/self/maps; else nan)."""
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        return float("nan")
    spans = [
        [int(a, 16) for a in line.split()[0].split("-")]
        for line in maps.read_text().splitlines()
        if line.endswith(".safetensors")
    ]
    params = list(model.parameters())
    inside = sum(p.nbytes for p in params if any(lo <= p.data_ptr() < hi for lo, hi in spans))
    return inside / sum(p.nbytes for p in params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a local model directory (save_pretrained)")
    add_cell_args(parser, mode="decode", batch_size=4, prompt_length=32, tokens=16, repeats=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with torch.no_grad():
        mapped, _ = load_causal_lm(args.model, dtype=torch.float32, device="cpu", with_tokenizer=False)
        mapped.eval().requires_grad_(False)
        copied = share_weights(mapped, clone={n for n, _ in mapped.named_parameters(remove_duplicate=False)})
        copied.tie_weights()
        states = {
            "mapped, frozen": (mapped, False),
            "copied, frozen": (copied, False),
            "copied, requires grad": (copied, True),
        }
        prompt = torch.randint(
            0,
            mapped.config.vocab_size,
            (args.batch_size, args.prompt_length),
            generator=torch.Generator().manual_seed(0),
        )
        clock = Clock("cpu", args.clock)

        def sampler(model: nn.Module, grad: bool) -> Callable[[], float]:
            inner = (
                decode_sampler(model, prompt, args.tokens, clock)
                if args.mode == "decode"
                else prefill_sampler(model, prompt, clock)
            )

            def sample() -> float:
                model.requires_grad_(grad)  # untimed; `copied` serves two states
                return inner()

            return sample

        samples = round_robin({n: sampler(m, g) for n, (m, g) in states.items()}, args.repeats, warmup=1)

        head = copied.lm_head.weight
        stream = torch.randn(args.batch_size, args.prompt_length, head.shape[1])[:, -1:, :]
        head_ms = {}
        for grad in (False, True, False, True):
            head.requires_grad_(grad)
            F.linear(stream, head)
            times = [clock.measure(lambda: F.linear(stream, head)) for _ in range(5)]
            head_ms.setdefault(grad, []).extend(times)
    what = describe_cell(args)
    print(
        f"{args.model} ({mapped.config.num_hidden_layers} layers, d={mapped.config.hidden_size}), "
        f"{args.threads} thread(s), {args.clock} clock, torch {torch.__version__}, {args.repeats} repeats, "
        f"{time.perf_counter() - started:.0f} s; {what}"
    )
    print(
        f"parameter bytes in a safetensors mapping: mapped {mapped_fraction(mapped):.0%}, copied {mapped_fraction(copied):.0%}"
    )
    print_ratios(samples, width=22)
    print(
        f"LM head alone on the last-position slice ({args.batch_size}, 1, {head.shape[1]}) of a "
        f"({args.batch_size}, {args.prompt_length}, {head.shape[1]}) stream, median of 10: "
        f"frozen {statistics.median(head_ms[False]):.1f} ms, requires grad {statistics.median(head_ms[True]):.1f} ms"
    )


if __name__ == "__main__":
    main()
