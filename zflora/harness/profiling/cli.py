"""The `zflora profile` subcommand: argparse registration and its handler.

    zflora profile --preset llama-3.2-1b --layers 4 --r 32 --batch-sizes 1 4 --prompt-lengths 16 64 --out out/profile

`add_profile_parser(subparsers)` registers the subcommand with `func=profile_command`;
zflora/cli.py dispatches to `args.func(args)`, which returns the exit status.
"""

from __future__ import annotations

import argparse
from typing import Any

from zflora.harness.profiling.settings import DTYPES, PRESETS, VARIANTS, ProfileSettings

DEFAULT_OUT = "out/profile"


def add_profile_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `profile` on an argparse subparsers object; returns the new parser."""
    defaults = ProfileSettings()
    parser = subparsers.add_parser(
        "profile",
        help="time base, LoRA (unmerged, merged) and zFLoRA (unfused, fused): prefill, decode, memory, switching",
        description="Latency profile of zero-latency adapters next to LoRA, merged LoRA and the base model. "
        "Writes profile.json, profile.md, prefill.png, decode.png and switch.png into --out.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--preset",
        default=defaults.preset,
        choices=sorted(PRESETS),
        help="named model shape with random weights (default: %(default)s)",
    )
    source.add_argument(
        "--model", default=None, metavar="DIR", help="a local HF model directory instead of a preset"
    )
    parser.add_argument(
        "--layers", type=int, default=None, help="keep only the first N decoder layers of a preset"
    )
    parser.add_argument("--r", type=int, default=defaults.r, help="adapter rank (default: %(default)s)")
    parser.add_argument("--dtype", default=defaults.dtype, choices=DTYPES, help="default: %(default)s")
    parser.add_argument(
        "--device", default=defaults.device, help="cpu, cuda or cuda:N (default: %(default)s)"
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(defaults.batch_sizes), metavar="B")
    parser.add_argument(
        "--prompt-lengths", type=int, nargs="+", default=list(defaults.prompt_lengths), metavar="L"
    )
    parser.add_argument("--decode-tokens", type=int, default=defaults.decode_tokens, metavar="N")
    parser.add_argument(
        "--decode-context",
        type=int,
        default=None,
        metavar="L",
        help="prompt length before decoding (default: the shortest --prompt-lengths)",
    )
    parser.add_argument("--repeats", type=int, default=defaults.repeats, metavar="N")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, metavar="N")
    parser.add_argument("--switch-repeats", type=int, default=defaults.switch_repeats, metavar="N")
    parser.add_argument(
        "--threads", type=int, default=None, metavar="N", help="torch CPU threads (default: torch's)"
    )
    parser.add_argument(
        "--clock",
        default=defaults.clock,
        choices=("wall", "cpu"),
        help="wall: elapsed time; cpu: process CPU time, for a shared CPU machine with --threads 1",
    )
    parser.add_argument(
        "--pad-multiples",
        type=int,
        nargs="*",
        default=[],
        metavar="M",
        help="also time fused models whose width is padded to these multiples",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        choices=VARIANTS,
        metavar="NAME",
        help=f"variants to time (default: all of {', '.join(VARIANTS)})",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument("--no-switch", action="store_true", help="skip the adapter-switch timing")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--out", default=DEFAULT_OUT, metavar="DIR", help="output directory (default: %(default)s)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=profile_command)
    return parser


def settings_from_args(args: argparse.Namespace) -> ProfileSettings:
    """ProfileSettings from parsed `zflora profile` arguments (validated: ZFLoRAError on bad values)."""
    return ProfileSettings(
        preset=args.preset,
        model=args.model,
        layers=args.layers,
        r=args.r,
        dtype=args.dtype,
        device=args.device,
        batch_sizes=tuple(args.batch_sizes),
        prompt_lengths=tuple(args.prompt_lengths),
        decode_tokens=args.decode_tokens,
        decode_context=args.decode_context,
        repeats=args.repeats,
        warmup=args.warmup,
        switch_repeats=args.switch_repeats,
        threads=args.threads,
        clock=args.clock,
        pad_multiples=tuple(args.pad_multiples),
        variants=tuple(args.variants),
        memory=not args.no_memory,
        switch=not args.no_switch,
        seed=args.seed,
    )


def profile_command(args: argparse.Namespace) -> int:
    """Run the profile, print the markdown table and where the files went; returns 0."""
    from zflora.harness.profiling.report import markdown_report
    from zflora.harness.profiling.runner import run_profile

    settings = settings_from_args(args)
    result = run_profile(settings, args.out, progress=not args.quiet)
    print(markdown_report(result))
    print(f"wrote {', '.join(result['files'].values())}")
    return 0
