"""What would a fused width that the config check forbids save? Prefill/decode of base, fused, and aligned widths.

    .venv/bin/python benchmarks/unchecked_width.py --model /tmp/SmolLM2-135M-Instruct --r 16 --mode prefill \\
        --batch-size 4 --prompt-length 128 --multiples 1 24 72 --repeats 11

Llama-family configs require hidden_size % num_attention_heads == 0, so at SmolLM2-135M
(d = 576, 9 heads) fusion picks the width 594 = 576 + 18 for r = 16 (two zero channels),
the smallest w >= r that makes d + w a multiple of 9. Inside the model nothing needs it
(head_dim is explicit: q/k/v/o have 9 x 64 rows either way). This script switches the
check off (LlamaConfig's validate_architecture, in this process only) and fuses the same
adapter at the widths fused_width picks for each `--multiples` value without it (1:
576 + r = 592, a multiple of 16; 24: 600; 72: 648, the first multiple of 9 that is also
a multiple of 8, a standard model), checks that each computes the zFLoRA training form's
logits, and times them next to the base and the standard fused model, interleaved, with
ratios to the base and paired bootstrap intervals. A model whose width fails the check is
not a standard checkpoint: its config.json fails that check when loaded (the point of a
fused export is that it loads anywhere), so this only says how much of the fused model's
overhead the width 594 costs.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import add_cell_args, describe_cell, print_ratios  # noqa: E402

from zflora.harness.profiling import ProfileSettings, build_variants, round_robin  # noqa: E402
from zflora.harness.profiling.measure import decode_sampler, prefill_sampler  # noqa: E402
from zflora.harness.profiling.timing import Clock  # noqa: E402
from zflora.harness.profiling.variants import ADAPTERS  # noqa: E402
from zflora.method.fusion import fuse_adapter, fused_width  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="smollm2-135m")
    parser.add_argument("--model", default=None, help="a local model directory (overrides --preset)")
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--multiples", type=int, nargs="+", default=[1, 24], help="widths without the check")
    add_cell_args(parser, mode="prefill", batch_size=1, prompt_length=128, tokens=16, repeats=11)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import LlamaConfig

    settings = ProfileSettings(
        preset=args.preset, model=args.model, r=args.r, variants=("base", "zflora", "zflora-fused")
    )
    started = time.perf_counter()
    with torch.no_grad():
        vs = build_variants(settings, torch.device("cpu"), torch.float32)
        d = vs.base.config.hidden_size
        models = {"base": vs.base, f"fused {d}+{vs.widths['zflora-fused']}": vs.fused}
        prompt = torch.randint(
            0,
            vs.base.config.vocab_size,
            (args.batch_size, args.prompt_length),
            generator=torch.Generator().manual_seed(0),
        )
        reference = vs.zflora(input_ids=prompt[:1, :16]).logits
        # this process only: drop the head-count check from the config's strict validators
        validators = LlamaConfig.__dict__.get("__class_validators__")
        LlamaConfig.__class_validators__ = [
            v for v in LlamaConfig.__class_validators__ if v.__name__ != "validate_architecture"
        ]
        try:
            for multiple in args.multiples:
                width = fused_width(vs.base.config, args.r, multiple)
                legal = (d + width) % vs.base.config.num_attention_heads == 0  # passes the check anyway
                name = f"{'fused' if legal else 'unchecked'} {d}+{width}"
                if width in vs.widths.values() or name in models:
                    continue
                model = fuse_adapter(vs.zflora, ADAPTERS[0], multiple=multiple).eval().requires_grad_(False)
                torch.testing.assert_close(
                    model(input_ids=prompt[:1, :16]).logits, reference, atol=1e-4, rtol=1e-4
                )
                models[name] = model
        finally:
            if validators is None:
                del LlamaConfig.__class_validators__
            else:
                LlamaConfig.__class_validators__ = validators
        clock = Clock("cpu", args.clock)

        def sampler(model: nn.Module) -> Callable[[], float]:
            if args.mode == "decode":
                return decode_sampler(model, prompt, args.tokens, clock)
            return prefill_sampler(model, prompt, clock)

        samples = round_robin({n: sampler(m) for n, m in models.items()}, args.repeats, warmup=1)
    what = describe_cell(args)
    print(
        f"{settings.source} ({vs.base.config.num_hidden_layers} layers), d={d}, r={args.r}, {args.threads} thread(s), "
        f"{args.clock} clock, torch {torch.__version__}, {args.repeats} repeats, "
        f"{time.perf_counter() - started:.0f} s; {what}"
    )
    print_ratios(samples, "base")


if __name__ == "__main__":
    main()
