"""The `profile` stage's task: latency of every variant for one target (the base model or a preset)."""

from __future__ import annotations

from typing import Any

from prefect import task

from .tracking import log_numeric_metrics


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """Ratios to the base model that a reader wants first: decode and prefill per variant, switch times."""
    out: dict[str, Any] = {
        "source": result["model"]["source"],
        "layers": result["model"]["layers"],
        "r": result["settings"]["r"],
        "dtype": result["run"]["dtype"],
        "threads": result["run"]["threads"],
    }
    for kind in ("prefill", "decode"):
        for cell in result[kind]:
            label = f"b{cell['batch_size']}" + (f"_L{cell['prompt_length']}" if kind == "prefill" else "")
            for variant, summary in cell["variants"].items():
                ratio = summary.get("ratio_to_base")
                if variant != "base" and ratio:
                    out[f"{kind}_{label}_{variant}_vs_base"] = round(ratio["ratio"], 4)
            out[f"{kind}_{label}_base_ms"] = round(cell["variants"]["base"]["median_ms"], 3)
    for method, summary in (result.get("switch") or {}).get("methods", {}).items():
        out[f"switch_{method}_ms"] = round(summary["median_ms"], 4)
    return out


@task(name="profile-latency")
def profile_target(target: str, settings: Any, out_dir: str) -> dict[str, Any]:
    """Run the profiler for one target into out_dir (JSON, markdown, plots); returns the headline figures."""
    import mlflow

    from zflora.harness.profiling.runner import run_profile

    result = run_profile(settings, out_dir, progress=True)
    figures = headline(result)
    log_numeric_metrics(
        {k: v for k, v in figures.items() if k not in ("source", "dtype")}, prefix=f"{target}."
    )
    mlflow.log_artifacts(out_dir, artifact_path=f"profile/{target}")
    return figures
