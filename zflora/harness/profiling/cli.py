"""The `zflora profile` subcommand: argparse registration and its handler.

    zflora profile --preset llama-3.2-1b --layers 4 --r 32 --batch-sizes 1 4 --prompt-lengths 16 64 --out out/profile

`add_profile_parser(subparsers)` registers the subcommand with `func=profile_command`;
zflora/cli.py dispatches to `args.func(args)`, which returns the exit status.
"""

from __future__ import annotations

import argparse
from typing import Any

from zflora.harness.profiling.settings import ProfileSettings
from zflora.settings import add_settings_arguments, settings_from_args

DEFAULT_OUT = "out/profile"


def add_profile_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `profile` on an argparse subparsers object; returns the new parser."""
    parser = subparsers.add_parser(
        "profile",
        help="time base, LoRA (unmerged, merged) and zFLoRA (unfused, fused): prefill, decode, memory, switching",
        description="Latency profile of zero-latency adapters next to LoRA, merged LoRA and the base model. "
        "Writes profile.json, profile.md, prefill.png, decode.png and switch.png into --out.",
    )
    add_settings_arguments(parser, ProfileSettings)
    parser.add_argument(
        "--out", default=DEFAULT_OUT, metavar="DIR", help="output directory (default: %(default)s)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=profile_command)
    return parser


def profile_command(args: argparse.Namespace) -> int:
    """Run the profile, print the markdown table and where the files went; returns 0."""
    from zflora.harness.profiling.report import markdown_report
    from zflora.harness.profiling.runner import run_profile

    settings = settings_from_args(args, ProfileSettings)
    result = run_profile(settings, args.out, progress=not args.quiet)
    print(markdown_report(result))
    print(f"wrote {', '.join(result['files'].values())}")
    return 0
