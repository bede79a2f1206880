"""How the width of the residual stream changes the cost of each matrix multiply (CPU or CUDA).

    .venv/bin/python benchmarks/width_sweep.py --hidden 2048 --widths 0 32 64 128 --tokens 1 16
    .venv/bin/python benchmarks/width_sweep.py --preset smollm2-135m --widths 0 16 18 24 32 64 \\
        --tokens 1 128 --threads 2 --clock wall

For every weight of one decoder layer of the shape (default: Llama-3.2-1B; `--preset`
takes d, FFN, k/v and vocabulary from a profiling preset) and its LM head, at stream
width d + w, times F.linear on `tokens` rows (1 = batch-1 decode, a GEMV; more =
prefill, a GEMM), interleaving the widths, and prints time relative to w = 0 next to
the ratio of bytes (GEMV) or FLOPs (GEMM) the wider matrix really costs. A time ratio
well above the bytes ratio is a kernel that handles the width less efficiently, not
extra work; if a padded width (64, 128) brought the ratio back to its bytes, padding
would pay. `--clock cpu` (default) counts this thread's CPU time (use with 1 thread);
`--clock wall` counts elapsed time (use with several threads on a quiet machine).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zflora.harness.profiling.settings import PRESETS  # noqa: E402


def shapes(d: int, ffn: int, kv: int, vocab: int, w: int) -> dict[str, tuple[int, int]]:
    """(out, in) of each weight kind in a fused model of stream width d + w."""
    return {
        "lm_head (reads d+w)": (vocab, d + w),
        "gate/up (read d+w)": (ffn, d + w),
        "q (reads d+w)": (d, d + w),
        "k/v (read d+w)": (kv, d + w),
        "o (writes d+w)": (d + w, d),
        "down (writes d+w)": (d + w, ffn),
    }


def time_linear(x: torch.Tensor, weight: torch.Tensor, calls: int, clock: str) -> float:
    """Nanoseconds per F.linear call: CUDA synchronised wall time; CPU this thread's CPU time or wall time."""
    cuda = x.device.type == "cuda"
    now = time.perf_counter_ns if cuda or clock == "wall" else time.thread_time_ns
    if cuda:
        torch.cuda.synchronize()
    started = now()
    for _ in range(calls):
        F.linear(x, weight)
    if cuda:
        torch.cuda.synchronize()
    return (now() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default=None, help=f"take the shape from a preset: {', '.join(PRESETS)}")
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--ffn", type=int, default=8192)
    parser.add_argument("--kv", type=int, default=512, help="k/v projection outputs (kv heads x head_dim)")
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--widths", type=int, nargs="+", default=[0, 32, 64, 128])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    if args.preset is not None:
        shape = PRESETS[args.preset]
        head_dim = shape.head_dim or shape.hidden_size // shape.num_attention_heads
        args.hidden, args.ffn, args.vocab = shape.hidden_size, shape.intermediate_size, shape.vocab_size
        args.kv = shape.num_key_value_heads * head_dim
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    print(
        f"{args.preset or 'custom shape'}: d={args.hidden}, ffn={args.ffn}, k/v={args.kv}, vocab={args.vocab}; "
        f"{args.dtype} on {args.device}, {args.threads} thread(s), {args.clock} clock, torch {torch.__version__}, "
        f"median of {args.repeats}"
    )
    for tokens in args.tokens:
        print(
            f"\n{tokens} token(s) per call ({'GEMV' if tokens == 1 else 'GEMM'}): time ratio to w=0 (cost ratio)"
        )
        print(
            f"{'weight':22s}{'w=0 time':>12s}"
            + "".join(f"{f'w={w} ({args.hidden + w})':>20s}" for w in args.widths)
        )
        for kind in shapes(args.hidden, args.ffn, args.kv, args.vocab, 0):
            weights = {
                w: torch.randn(
                    shapes(args.hidden, args.ffn, args.kv, args.vocab, w)[kind], device=device, dtype=dtype
                )
                for w in args.widths
            }
            inputs = {
                w: torch.randn(1, tokens, weights[w].shape[1], device=device, dtype=dtype)
                for w in args.widths
            }
            calls = 1 if kind.startswith("lm_head") else 10

            for w in args.widths:
                time_linear(inputs[w], weights[w], calls, args.clock)
            samples: dict[int, list[float]] = {w: [] for w in args.widths}
            for repeat in range(args.repeats):
                shift = repeat % len(args.widths)
                for w in args.widths[shift:] + args.widths[:shift]:
                    samples[w].append(time_linear(inputs[w], weights[w], calls, args.clock))
            base = statistics.median(samples[args.widths[0]])
            cells = []
            for w in args.widths:
                cost = weights[w].numel() / weights[args.widths[0]].numel()
                cells.append(f"{statistics.median(samples[w]) / base:.3f} ({cost:.3f})")
            print(
                f"{kind:22s}{base / 1e6:9.3f} ms" + "".join(f"{c:>20s}" for c in cells),
                flush=True,
            )


if __name__ == "__main__":
    main()
