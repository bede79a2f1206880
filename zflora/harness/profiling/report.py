"""Writers for a profile: JSON of every figure, a markdown table of ratios, PNG plots (matplotlib Agg).

from zflora.harness.profiling.report import write_report
write_report(result, "out/profile")   # profile.json, profile.md, prefill.png, decode.png, switch.png
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

from zflora.harness.profiling.settings import PRESETS
from zflora.method.atomic import atomic_file

FILES = {
    "json": "profile.json",
    "markdown": "profile.md",
    "prefill": "prefill.png",
    "decode": "decode.png",
    "switch": "switch.png",
}


def write_json(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """All figures (samples included) as indented JSON, written atomically."""
    with atomic_file(path) as handle:
        json.dump(result, handle, indent=2, sort_keys=False)
        handle.write("\n")
    return Path(path)


def _ratio_text(summary: dict[str, Any]) -> str:
    ratio = summary.get("ratio_to_base")
    if ratio is None:
        return "-"
    return f"{ratio['ratio']:.3f} [{ratio['ci_low']:.3f}, {ratio['ci_high']:.3f}]"


def _columns(result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(column header, cell) for every prefill and decode cell, in table order."""
    columns = [(f"prefill b={c['batch_size']} L={c['prompt_length']}", c) for c in result["prefill"]]
    columns += [(f"decode b={c['batch_size']}", c) for c in result["decode"]]
    return columns


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def describe_model(result: dict[str, Any]) -> str:
    """'llama-3.2-1b (4 of 16 layers), d=2048, r=32, fused width 2048+32'."""
    model, settings = result["model"], result["settings"]
    source = model["source"]
    layers = model["layers"]
    if settings.get("model") is None and source in PRESETS and layers != PRESETS[source].num_hidden_layers:
        source += f" ({layers} of {PRESETS[source].num_hidden_layers} layers)"
    else:
        source += f" ({layers} layers)"
    shape = model["shape"]
    widths = ", ".join(f"{shape['hidden_size']}+{w}" for w in dict.fromkeys(model["fused_widths"].values()))
    text = f"{source}, d={shape['hidden_size']}, r={settings['r']}"
    return text + (f", fused width {widths}" if widths else "")


def markdown_report(result: dict[str, Any]) -> str:
    """Ratios to the base model (median and bootstrap interval), medians, memory, switch time, checks."""
    run, machine = result["run"], result["machine"]
    device = machine.get("gpu", machine["cpu"]) if run["device"].startswith("cuda") else machine["cpu"]
    lines = [
        f"# Latency profile: {describe_model(result)}",
        "",
        f"{run['dtype']} on {run['device']} ({device}), {run['threads']} threads, {run.get('clock', 'wall')} clock, "
        f"load average {run.get('load_average_start')} -> {run.get('load_average_end')}; torch {machine['torch']}, "
        f"transformers {machine['transformers']}, peft {machine['peft']}; {machine['platform']}; {machine['date_utc']}.",
        f"{run['repeats']} repeats per cell, variants interleaved round-robin after {run['warmup']} warm-up runs; "
        f"prefill = time to first token (logits of the last position); decode = ms per token over "
        f"{run['decode_tokens']} greedy tokens with a KV cache after a {run['decode_context']}-token prompt.",
        "",
    ]
    columns = _columns(result)
    variants = list(result["variants"])
    if columns:
        lines += [
            "## Latency relative to the base model",
            "",
            "Ratio of medians, [95% paired bootstrap interval over repeats]. Below 1: faster than the base.",
        ]
        if "lora-merged" in variants:
            lines.append(
                "lora-merged runs the same matrix shapes as the base (only the values differ): how far its "
                "ratio strays from 1.000 is this run's noise floor."
            )
        lines.append("")
        rows = [[name] + [_ratio_text(cell["variants"][name]) for _, cell in columns] for name in variants]
        lines += _table(["variant"] + [h for h, _ in columns], rows) + [""]
        lines += ["## Median latency (ms; decode: ms per token)", ""]
        rows = [
            [name] + [f"{cell['variants'][name]['median_ms']:.2f}" for _, cell in columns]
            for name in variants
        ]
        lines += _table(["variant"] + [h for h, _ in columns], rows) + [""]
    memory = result.get("memory") or {}
    if memory:
        lines += [
            f"## Memory (prefill b={memory['batch_size']} L={memory['prompt_length']})",
            "",
            "Weights: distinct tensors the variant holds (shared storage once). "
            "Activations: peak allocation above the weights during the prefill.",
            "",
        ]
        rows = [
            [name, f"{m['weights_mb']:.1f}", f"{m['peak_activation_mb']:.1f}", f"{m['peak_mb']:.1f}"]
            for name, m in memory["variants"].items()
        ]
        lines += _table(["variant", "weights MB", "peak activations MB", "peak MB"], rows) + [""]
    switch = result.get("switch") or {}
    if switch:
        lines += [f"## Adapter switch ({switch['repeats']} switches between two preloaded adapters)", ""]
        rows = []
        for name, s in switch["methods"].items():
            times = s.get("times_zflora_swap")
            rows.append(
                [
                    name,
                    f"{s['median_ms']:.3f}",
                    f"{s['min_ms']:.3f} - {s['max_ms']:.3f}",
                    f"{times:.1f}x" if times is not None else "-",
                ]
            )
        lines += _table(["method", "median ms", "min - max ms", "vs zflora-swap"], rows) + [""]
    checks = result.get("checks") or {}
    if checks:
        lines += ["## Checks (each variant computes what it claims)", ""]
        rows = []
        for name, c in checks.items():
            same = c.get("same_greedy_tokens")
            rows.append(
                [
                    name,
                    c.get("equals", "-"),
                    f"{c['relative_logit_difference']:.1e}" if "relative_logit_difference" in c else "-",
                    "-" if same is None else ("yes" if same else "NO"),
                    f"{c['differs_from_base']:.3f}",
                ]
            )
        lines += _table(
            [
                "variant",
                "same function as",
                "relative logit difference",
                "same greedy tokens",
                "relative difference from base",
            ],
            rows,
        ) + [""]
    return "\n".join(lines)


def write_markdown(result: dict[str, Any], path: str | os.PathLike) -> Path:
    with atomic_file(path) as handle:
        handle.write(markdown_report(result))
    return Path(path)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)


def _plot_ratios(
    cells: list[dict[str, Any]], labels: list[str], variants: list[str], title: str, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(cells) + 2), 4.2))
    width = 0.8 / max(1, len(variants))
    x = np.arange(len(cells))
    for index, name in enumerate(variants):
        ratios = [c["variants"][name]["ratio_to_base"] for c in cells]
        values = np.array([r["ratio"] for r in ratios])
        errors = np.array(
            [
                [v - r["ci_low"] for v, r in zip(values, ratios)],
                [r["ci_high"] - v for v, r in zip(values, ratios)],
            ]
        ).clip(min=0)
        ax.bar(
            x + (index - (len(variants) - 1) / 2) * width, values, width, yerr=errors, capsize=2, label=name
        )
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    lows = [c["variants"][n]["ratio_to_base"]["ci_low"] for c in cells for n in variants]
    highs = [c["variants"][n]["ratio_to_base"]["ci_high"] for c in cells for n in variants]
    # differences of a few percent vanish on an axis from 0: zoom in, and say so on the axis
    bottom = max(0.0, np.floor((min(lows) - 0.05) * 20) / 20)
    ax.set_ylim(bottom, max(highs) + 0.08 * (max(highs) - bottom + 0.1))
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel(f"latency / base (median, 95% CI)\ny axis from {bottom:.2f}", fontsize=9)
    ax.set_title(textwrap.fill(title, 80), fontsize=9)
    ax.legend(fontsize=7, ncol=min(3, len(variants)), loc="upper left")
    fig.tight_layout()
    _save(fig, path)


def _ms_text(value: float) -> str:
    return f"{value:,.0f} ms" if value >= 100 else f"{value:.3g} ms"


def _plot_switch(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = (result.get("switch") or {}).get("methods", {})
    fig, ax = plt.subplots(figsize=(7, 0.6 * max(1, len(methods)) + 1.6))
    if methods:
        names = list(methods)
        medians = [methods[n]["median_ms"] for n in names]
        low = [m - methods[n]["min_ms"] for n, m in zip(names, medians)]
        high = [methods[n]["max_ms"] - m for n, m in zip(names, medians)]
        ax.barh(names, medians, xerr=[low, high], capsize=3, color="tab:blue")
        ax.set_xscale("log")
        longest = max(methods[n]["max_ms"] for n in names)
        ax.set_xlim(right=longest * 12)  # room for the labels
        for y, name in enumerate(names):
            ax.text(methods[name]["max_ms"] * 1.3, y, _ms_text(medians[y]), va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("adapter switch time, ms (log scale; median, min-max)")
    else:
        ax.text(0.5, 0.5, "adapter switching not measured", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title(textwrap.fill(f"Adapter switch: {describe_model(result)}", 80), fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def write_plots(result: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """prefill.png and decode.png (grouped bars of ratio to base per cell) and switch.png (log scale)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    variants = list(result["variants"])
    model = describe_model(result)
    prefill = result["prefill"]
    labels = [
        f"b={c['batch_size']} L={c['prompt_length']}\nbase {c['variants']['base']['median_ms']:.3g} ms"
        for c in prefill
    ]
    paths = {key: out / FILES[key] for key in ("prefill", "decode", "switch")}
    _plot_ratios(prefill, labels, variants, f"Prefill (time to first token): {model}", paths["prefill"])
    decode = result["decode"]
    labels = [f"b={c['batch_size']}\nbase {c['variants']['base']['median_ms']:.3g} ms/token" for c in decode]
    _plot_ratios(decode, labels, variants, f"Decode per token (KV cache): {model}", paths["decode"])
    _plot_switch(result, paths["switch"])
    return paths


def write_report(result: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write profile.json, profile.md and the three plots into `out_dir`; returns their paths by kind."""
    out = Path(out_dir)
    paths = {
        "json": write_json(result, out / FILES["json"]),
        "markdown": write_markdown(result, out / FILES["markdown"]),
    }
    paths.update(write_plots(result, out))
    return paths
