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

Names are imported on first use: `zflora.harness.profiling.settings` (what params.yaml
validates) stays free of torch. Project code imports from the defining modules, so a
pipeline stage's exact dependencies can be read off its imports (tests/pipeline/test_dvc_deps.py).
"""

from zflora._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "add_profile_parser": ".cli",
        "profile_command": ".cli",
        "markdown_report": ".report",
        "write_json": ".report",
        "write_markdown": ".report",
        "write_plots": ".report",
        "write_report": ".report",
        "machine_info": ".runner",
        "profile": ".runner",
        "run_profile": ".runner",
        "PRESETS": ".settings",
        "VARIANTS": ".settings",
        "ModelShape": ".settings",
        "ProfileSettings": ".settings",
        "Clock": ".timing",
        "ratio_interval": ".timing",
        "rotated": ".timing",
        "round_robin": ".timing",
        "summarize": ".timing",
        "VariantSet": ".variants",
        "build_base_model": ".variants",
        "build_variants": ".variants",
    },
)

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
