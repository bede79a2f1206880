"""Reproduce the CPU latency figures: tiny model and the Llama 1B/3B/8B shapes (few layers), fp32.

    .venv/bin/python benchmarks/cpu_profile.py                      # all configurations (~1 h on 2 cores)
    .venv/bin/python benchmarks/cpu_profile.py --only tiny llama-3.2-1b
    .venv/bin/python benchmarks/cpu_profile.py --threads 2 --clock wall   # a quiet, dedicated machine

Writes benchmarks/results/cpu-<date>/<config>/ (profile.json, profile.md, PNGs) and the
summary benchmarks/results/cpu-<date>.json + .md with the targets checked:
zflora-fused / base within r/d + 1% (prefill and decode), zflora-fused decoding faster
than unmerged LoRA, zflora swap >= 20x faster than PEFT's merged-adapter switch.

Defaults are for a shared machine: one thread and the process-CPU-time clock. With two
OpenMP threads on two cores, any other busy process stalls every parallel region at its
barrier and single forwards slow down 10x at random; one thread degrades gracefully, and
CPU time leaves out the time the scheduler gives to other processes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os

from _common import run_suite

CONFIGS = {
    "tiny": dict(preset="tiny", batch_sizes=(1, 8), prompt_lengths=(32, 128), decode_tokens=16, repeats=30),
    "llama-3.2-1b": dict(
        preset="llama-3.2-1b",
        layers=4,
        batch_sizes=(1, 4),
        prompt_lengths=(8, 32),
        decode_tokens=8,
        repeats=16,
        pad_multiples=(128,),
    ),
    # many short samples of the closest call (batch-1 decode at the 1B shape): drift cancels in the pairs
    "llama-3.2-1b-decode": dict(
        preset="llama-3.2-1b",
        layers=4,
        batch_sizes=(1,),
        prompt_lengths=(8,),
        decode_tokens=2,
        repeats=60,
        variants=("base", "lora", "lora-merged", "zflora-fused"),
        memory=False,
        switch=False,
    ),
    "llama-3.2-3b": dict(
        preset="llama-3.2-3b",
        layers=2,
        batch_sizes=(1, 4),
        prompt_lengths=(16,),
        decode_tokens=4,
        repeats=8,
        switch_repeats=10,
    ),
    "llama-3.1-8b": dict(
        preset="llama-3.1-8b",
        layers=2,
        batch_sizes=(1, 4),
        prompt_lengths=(16,),
        decode_tokens=4,
        repeats=8,
        switch_repeats=10,
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    parser.add_argument("--r", type=int, default=32)
    parser.add_argument("--repeats-scale", type=float, default=1.0, help="multiply every config's repeats")
    parser.add_argument("--suite", default=f"cpu-{dt.date.today().isoformat()}", help="output name")
    args = parser.parse_args()
    configs = {name: dict(CONFIGS[name]) for name in args.only}
    for config in configs.values():
        config["repeats"] = max(2, round(config["repeats"] * args.repeats_scale))
    common = dict(r=args.r, dtype="float32", device="cpu", threads=args.threads, clock=args.clock, warmup=2)
    command = "benchmarks/cpu_profile.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}" for k, v in vars(args).items()
    )
    header = [
        f"Command: `.venv/bin/python {command}`",
        f"Load average at start: {os.getloadavg() if hasattr(os, 'getloadavg') else 'n/a'}",
    ]
    run_suite(args.suite, configs, common, header)


if __name__ == "__main__":
    main()
