"""GPU latency figures: Llama-3.2-1B and 3B shapes (all layers) in bf16 on CUDA, then 8B if time allows.

    python benchmarks/gpu_profile.py                 # about 5 minutes on one H200 (estimate)
    python benchmarks/gpu_profile.py --budget-s 240  # start no new model after 240 s

Exits with status 2 and a message when torch sees no CUDA GPU. Writes
benchmarks/results/gpu-<date>.json + .md (targets checked, every figure) and the
per-model reports under benchmarks/results/gpu-<date>/<config>/. The summary is
rewritten after each model, so a run cut short keeps what it finished.

Budget: each model costs build (seconds: random weights, no download) + prefill and
decode cells x 5 variants x repeats + switch timing; the 8B shape is started only when
less than --budget-s seconds have passed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

import torch

CONFIGS = {
    "llama-3.2-1b": dict(preset="llama-3.2-1b"),
    "llama-3.2-3b": dict(preset="llama-3.2-3b"),
    "llama-3.1-8b": dict(preset="llama-3.1-8b"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--device", default="cuda", help="cuda[:N]; 'cpu' only for a dry run of this script")
    parser.add_argument(
        "--layers", type=int, default=None, help="keep only the first N layers (default: all)"
    )
    parser.add_argument("--r", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--prompt-lengths", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--decode-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--switch-repeats", type=int, default=20)
    parser.add_argument(
        "--budget-s", type=float, default=300.0, help="start no new model after this many seconds"
    )
    parser.add_argument("--suite", default=f"gpu-{dt.date.today().isoformat()}")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "gpu_profile.py: torch sees no CUDA GPU (torch.cuda.is_available() is False); "
            "run it on a machine with an NVIDIA GPU, or use benchmarks/cpu_profile.py",
            file=sys.stderr,
        )
        return 2
    from _common import run_suite

    common = dict(
        r=args.r,
        layers=args.layers,
        dtype="bfloat16",
        device=args.device,
        batch_sizes=tuple(args.batch_sizes),
        prompt_lengths=tuple(args.prompt_lengths),
        decode_tokens=args.decode_tokens,
        repeats=args.repeats,
        warmup=2,
        switch_repeats=args.switch_repeats,
    )
    header = [
        f"Command: `python benchmarks/gpu_profile.py {' '.join(sys.argv[1:])}`",
        f"GPU: {torch.cuda.get_device_name(args.device) if torch.cuda.is_available() else 'none (dry run)'}, "
        f"CUDA {torch.version.cuda}, torch {torch.__version__}; "
        "eager transformers (no torch.compile, no CUDA graphs), CUDA-event timing",
    ]
    configs = {name: CONFIGS[name] for name in args.only}
    results = run_suite(args.suite, configs, common, header, budget_s=args.budget_s)
    for name, result in results.items():
        missed = [f"{c['cell']}: {c['value']:.3f}" for c in result["targets"] if not c["met"]]
        print(f"{name}: {'all targets met' if not missed else 'missed ' + '; '.join(missed)}")
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
