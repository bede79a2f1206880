"""Would keeping the LM head at width d pay? Decode or prefill time of base, fused, and fused with a narrow head.

    .venv/bin/python benchmarks/head_width.py --preset llama-3.2-1b --layers 4 --repeats 12
    .venv/bin/python benchmarks/head_width.py --model /tmp/SmolLM2-135M-Instruct --r 16 --mode prefill \\
        --prompt-length 128 --logits all --repeats 15

The fused export's LM head reads all d + w stream channels: a V x (d + w) matrix, the
largest in the model (tied: the widened embedding). The paper folds the adapter
channels back into d before the head: logits = W_h (x[:d] + M x[d:]). That is not a
standard transformers module (the export would lose its "stock checkpoint" property),
so this script only measures what it would save: it times greedy decode steps (KV
cache) or prefills (`--logits last`: the logits of the last position, as generate()
and the profiler do; `--logits all`: of every position, as a bare `model(input_ids)`
does) of the base model, the fused model, and the fused model with its head swapped
for that narrow head (W_h is the base head, M the adapter's P or Q), interleaved, and
prints medians and ratios to the base with paired bootstrap intervals.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import add_cell_args, describe_cell, print_ratios  # noqa: E402

from zflora.harness.profiling import ProfileSettings, build_variants, round_robin  # noqa: E402
from zflora.harness.profiling.measure import decode_sampler, prefill_sampler  # noqa: E402
from zflora.harness.profiling.timing import Clock  # noqa: E402
from zflora.harness.profiling.variants import ADAPTERS  # noqa: E402


class NarrowHead(nn.Module):
    """logits = W_h (x[:d] + M x[d:]): the head at width d, the adapter channels folded in first."""

    def __init__(self, weight: torch.Tensor, fold: torch.Tensor) -> None:
        super().__init__()
        self.weight, self.fold, self.d = weight, fold, weight.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x[..., : self.d] + F.linear(x[..., self.d :], self.fold), self.weight)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="llama-3.2-1b")
    parser.add_argument("--model", default=None, help="a local model directory (overrides --preset)")
    parser.add_argument("--layers", type=int, default=4, help="first n layers of a preset")
    parser.add_argument("--logits", choices=("last", "all"), default="last", help="prefill: logits kept")
    parser.add_argument("--r", type=int, default=32)
    add_cell_args(parser, mode="decode", batch_size=1, prompt_length=8, tokens=8, repeats=12)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = ProfileSettings(
        preset=args.preset,
        model=args.model,
        layers=None if args.model else args.layers,
        r=args.r,
        variants=("base", "zflora-fused"),
    )
    with torch.no_grad():
        vs = build_variants(settings, torch.device("cpu"), torch.float32)
        d, width = vs.base.config.hidden_size, vs.widths["zflora-fused"]
        adapter = vs.adapters[ADAPTERS[0]]
        key = "model.embed_tokens.P" if vs.zflora.tied else "lm_head.Q"
        fold = torch.zeros(d, width)
        fold[:, : args.r] = adapter.tensors[key]  # padding channels (if any) are zero
        # the same fused model with its own module table: shares the decoder, swaps the head (a deep
        # copy, share_weights, cannot copy the adapter-slice views swap_adapter caches on a fused model)
        narrow = copy.copy(vs.fused)
        narrow._modules = dict(vs.fused._modules)
        narrow.lm_head = NarrowHead(vs.base.lm_head.weight, fold)
        models = {"base": vs.base, "zflora-fused": vs.fused, "fused+narrow-head": narrow}
        prompt = torch.randint(
            0,
            vs.base.config.vocab_size,
            (args.batch_size, args.prompt_length),
            generator=torch.Generator().manual_seed(0),
        )
        reference = vs.fused(input_ids=prompt).logits
        torch.testing.assert_close(narrow(input_ids=prompt).logits, reference, atol=1e-4, rtol=1e-4)
        clock = Clock("cpu", args.clock)
        started = time.perf_counter()

        def sampler(model: nn.Module) -> Callable[[], float]:
            if args.mode == "decode":
                return decode_sampler(model, prompt, args.tokens, clock)
            if args.logits == "last":
                return prefill_sampler(model, prompt, clock)  # what the profiler times
            return lambda: clock.measure(
                lambda: model(input_ids=prompt, use_cache=True).logits[:, -1].argmax(-1)
            )

        samples = round_robin(
            {n: sampler(m) for n, m in models.items()},
            args.repeats,
            warmup=1,
        )
    what = describe_cell(args)
    print(
        f"{settings.source} ({vs.base.config.num_hidden_layers} layers), d={d}, r={args.r}, fused width {d}+{width}, "
        f"{args.threads} thread(s), {args.clock} clock, torch {torch.__version__}, {args.repeats} repeats, "
        f"{time.perf_counter() - started:.0f} s; {what}"
    )
    print_ratios(samples, "base")


if __name__ == "__main__":
    main()
