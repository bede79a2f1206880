"""Would keeping the LM head at width d pay? Decode time of base, fused, and fused with a narrow head.

    .venv/bin/python benchmarks/head_width.py --preset llama-3.2-1b --layers 4 --repeats 12

The fused export's LM head reads all d + w stream channels: a V x (d + w) matrix, the
largest in the model (tied: the widened embedding). The paper folds the adapter
channels back into d before the head: logits = W_h (x[:d] + M x[d:]). That is not a
standard transformers module (the export would lose its "stock checkpoint" property),
so this script only measures what it would save: it times greedy decode steps (batch 1,
KV cache) of the base model, the fused model, and the fused model with its head swapped
for that narrow head (W_h is the base head, M the adapter's P or Q), interleaved, and
prints medians and ratios to the base with paired bootstrap intervals.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zflora.harness.profiling import ProfileSettings, build_variants, ratio_interval, round_robin  # noqa: E402
from zflora.harness.profiling.measure import decode_sampler  # noqa: E402
from zflora.harness.profiling.timing import Clock  # noqa: E402
from zflora.harness.profiling.variants import ADAPTERS, share_weights  # noqa: E402


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
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--r", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = ProfileSettings(
        preset=args.preset, layers=args.layers, r=args.r, variants=("base", "zflora-fused")
    )
    with torch.no_grad():
        vs = build_variants(settings, torch.device("cpu"), torch.float32)
        d, width = vs.base.config.hidden_size, vs.widths["zflora-fused"]
        adapter = vs.adapters[ADAPTERS[0]]
        key = "model.embed_tokens.P" if vs.zflora.tied else "lm_head.Q"
        fold = torch.zeros(d, width)
        fold[:, : args.r] = adapter.tensors[key]  # padding channels (if any) are zero
        narrow = share_weights(vs.fused)
        narrow.lm_head = NarrowHead(vs.base.lm_head.weight, fold)
        models = {"base": vs.base, "zflora-fused": vs.fused, "fused+narrow-head": narrow}
        prompt = torch.randint(
            0, vs.base.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0)
        )
        reference = vs.fused(input_ids=prompt).logits
        torch.testing.assert_close(narrow(input_ids=prompt).logits, reference, atol=1e-4, rtol=1e-4)
        clock = Clock("cpu", args.clock)
        started = time.perf_counter()
        samples = round_robin(
            {n: decode_sampler(m, prompt, args.tokens, clock) for n, m in models.items()},
            args.repeats,
            warmup=1,
        )
    print(
        f"{args.preset} ({args.layers} layers), d={d}, fused width {d}+{width}, {args.threads} thread(s), "
        f"{args.clock} clock, {args.repeats} repeats x {args.tokens} tokens, {time.perf_counter() - started:.0f} s"
    )
    for name, values in samples.items():
        ratio = ratio_interval(values, samples["base"])
        print(
            f"{name:18s} {sorted(values)[len(values) // 2]:8.1f} ms/token  x{ratio['ratio']:.3f} "
            f"[{ratio['ci_low']:.3f}, {ratio['ci_high']:.3f}]  min-ratio x{min(values) / min(samples['base']):.3f}"
        )


if __name__ == "__main__":
    main()
