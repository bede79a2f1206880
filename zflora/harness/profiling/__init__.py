"""Latency profiling: zero-latency adapters side by side with LoRA, merged LoRA and the base model.

    zflora profile --preset llama-3.2-1b --layers 4 --r 32 --batch-sizes 1 4 --prompt-lengths 16 64

    from zflora.harness.profiling import ProfileSettings, profile, run_profile
    result = run_profile(ProfileSettings(preset="tiny", repeats=5), "out/profile")

Variants (built on the same base weights): base; lora (HF PEFT, unmerged); lora-merged;
zflora (training form); zflora-fused (standard model of hidden size d + w). Figures:
prefill (time to first token) per batch size and prompt length, decode per token with a
KV cache, memory, and adapter switch time. Variants are timed round-robin; ratios to the
base come with a paired bootstrap interval. Every result records machine, versions and
settings.
"""

from zflora.harness.profiling.cli import add_profile_parser, profile_command
from zflora.harness.profiling.report import (
    markdown_report,
    write_json,
    write_markdown,
    write_plots,
    write_report,
)
from zflora.harness.profiling.runner import machine_info, profile, run_profile
from zflora.harness.profiling.settings import PRESETS, VARIANTS, ModelShape, ProfileSettings
from zflora.harness.profiling.timing import Clock, ratio_interval, rotated, round_robin, summarize
from zflora.harness.profiling.variants import VariantSet, build_base_model, build_variants

__all__ = [
    "PRESETS",
    "VARIANTS",
    "Clock",
    "ModelShape",
    "ProfileSettings",
    "VariantSet",
    "add_profile_parser",
    "build_base_model",
    "build_variants",
    "machine_info",
    "markdown_report",
    "profile",
    "profile_command",
    "ratio_interval",
    "rotated",
    "round_robin",
    "run_profile",
    "summarize",
    "write_json",
    "write_markdown",
    "write_plots",
    "write_report",
]
