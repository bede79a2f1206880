"""Shared by cpu_profile.py and gpu_profile.py: run a suite of profiles, check the targets, write a summary.

Each configuration is profiled with zflora.harness.profiling.run_profile into
`<results>/<suite>/<config>/` (profile.json, profile.md, three PNGs); after every
configuration the suite summary `<results>/<suite>.json` and `.md` is rewritten
atomically, so a run cut short still leaves the configurations it finished.
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zflora.harness.profiling import ProfileSettings, ratio_interval, run_profile  # noqa: E402
from zflora.harness.profiling.report import describe_model, markdown_report  # noqa: E402
from zflora.method.atomic import atomic_file  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SWITCH_TARGET = 20.0  # zFLoRA swap at least this many times faster than PEFT's merged-adapter switch


def add_cell_args(
    parser: Any, mode: str, batch_size: int, prompt_length: int, tokens: int, repeats: int
) -> None:
    """The timed cell and sampling options shared by the focused latency scripts (per-script defaults)."""
    parser.add_argument("--mode", choices=("decode", "prefill"), default=mode)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument(
        "--prompt-length", type=int, default=prompt_length, help="prompt (prefill) or context (decode)"
    )
    parser.add_argument("--tokens", type=int, default=tokens, help="decode steps per sample")
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="cpu")


def describe_cell(args: Any) -> str:
    """What one sample of `add_cell_args`' cell times (`args.logits`, where a script has it: last or all)."""
    if args.mode == "decode":
        return (
            f"decode, batch {args.batch_size}, {args.tokens} tokens after {args.prompt_length}: ms per token"
        )
    which = "every position" if getattr(args, "logits", "last") == "all" else "the last position"
    return (
        f"prefill, batch {args.batch_size} x {args.prompt_length} tokens, logits of {which}: ms per prefill"
    )


def print_ratios(samples: dict[str, list[float]], reference: str | None = None, width: int = 18) -> None:
    """One line per variant: median ms, ratio of medians to `reference` (default: the first
    variant) with its 95 % paired bootstrap interval, and the ratio of minimums."""
    ref = samples[reference] if reference is not None else next(iter(samples.values()))
    for name, values in samples.items():
        ratio = ratio_interval(values, ref)
        print(
            f"{name:{width}s} {statistics.median(values):8.2f} ms  x{ratio['ratio']:.3f} "
            f"[{ratio['ci_low']:.3f}, {ratio['ci_high']:.3f}]  min-ratio x{min(values) / min(ref):.3f}"
        )


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, evaluated on one profile (medians; intervals quoted for judgement)."""
    checks: list[dict[str, Any]] = []
    d, r = result["model"]["shape"]["hidden_size"], result["settings"]["r"]
    limit = 1.0 + r / d + 0.01
    for kind, cells in (("prefill", result["prefill"]), ("decode", result["decode"])):
        for cell in cells:
            label = f"{kind} b={cell['batch_size']}" + (
                f" L={cell['prompt_length']}" if kind == "prefill" else ""
            )
            variants = cell["variants"]
            if "zflora-fused" in variants:
                ratio = variants["zflora-fused"]["ratio_to_base"]
                checks.append(
                    {
                        "target": f"zflora-fused / base <= 1 + r/d + 1% = {limit:.4f}",
                        "cell": label,
                        "value": ratio["ratio"],
                        "interval": [ratio["ci_low"], ratio["ci_high"]],
                        "min_ratio": ratio["min_ratio"],
                        "met": ratio["ratio"] <= limit,
                    }
                )
            if kind == "decode" and {"zflora-fused", "lora"} <= set(variants):
                fused, lora = variants["zflora-fused"]["ratio_to_base"], variants["lora"]["ratio_to_base"]
                checks.append(
                    {
                        "target": "zflora-fused decodes faster than unmerged LoRA",
                        "cell": label,
                        "value": fused["ratio"] / lora["ratio"],
                        "interval": None,
                        "min_ratio": fused["min_ratio"] / lora["min_ratio"],
                        "met": fused["ratio"] < lora["ratio"],
                        "intervals_separate": fused["ci_high"] < lora["ci_low"],
                    }
                )
    methods = (result.get("switch") or {}).get("methods", {})
    if {"zflora-swap", "lora-merged-switch"} <= set(methods):
        times = methods["lora-merged-switch"]["median_ms"] / methods["zflora-swap"]["median_ms"]
        checks.append(
            {
                "target": f"zflora swap >= {SWITCH_TARGET:.0f}x faster than PEFT merged switch",
                "cell": "switch",
                "value": times,
                "interval": None,
                "met": times >= SWITCH_TARGET,
            }
        )
    return checks


def _targets_markdown(name: str, result: dict[str, Any]) -> list[str]:
    lines = [
        f"### {name}: {describe_model(result)}",
        "",
        "| target | cell | value (medians) | 95% interval | value (minimums) | met (medians) |",
        "|---|---|---|---|---|---|",
    ]
    for check in result["targets"]:
        minimum = f"{check['min_ratio']:.3f}" if check.get("min_ratio") is not None else "-"
        interval = (
            "-" if check["interval"] is None else f"[{check['interval'][0]:.3f}, {check['interval'][1]:.3f}]"
        )
        lines.append(
            f"| {check['target']} | {check['cell']} | {check['value']:.3f} | {interval} | "
            f"{minimum} | {'yes' if check['met'] else 'NO'} |"
        )
    return lines + [""]


def write_summary(suite: str, results: dict[str, dict[str, Any]], header: list[str]) -> tuple[Path, Path]:
    """`<results>/<suite>.json` (every figure of every configuration) and `.md` (targets, then each report)."""
    json_path, md_path = RESULTS / f"{suite}.json", RESULTS / f"{suite}.md"
    with atomic_file(json_path) as handle:
        json.dump({"suite": suite, "header": header, "configs": results}, handle, indent=2)
        handle.write("\n")
    lines = [f"# {suite}", "", *header, "", "## Targets", ""]
    for name, result in results.items():
        lines += _targets_markdown(name, result)
    for name, result in results.items():
        lines += [f"## {name}", "", markdown_report(result).split("\n", 1)[1].strip(), ""]
    with atomic_file(md_path) as handle:
        handle.write("\n".join(lines))
    return json_path, md_path


def run_suite(
    suite: str,
    configs: dict[str, dict[str, Any]],
    common: dict[str, Any],
    header: list[str],
    budget_s: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Profile each configuration in turn; stop starting new ones once `budget_s` seconds have passed.

    Results of configurations not run this time stay in the suite's summary.
    """
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    previous = RESULTS / f"{suite}.json"
    if previous.is_file():  # add to the suite: configurations run again replace their earlier results
        data = json.loads(previous.read_text())
        results = data.get("configs", {})
        header = [*data.get("header", []), *(line for line in header if line not in data.get("header", []))]
    for name, overrides in configs.items():
        elapsed = time.monotonic() - started
        if budget_s is not None and elapsed > budget_s:
            print(f"[{suite}] skipping {name}: {elapsed:.0f} s used of a {budget_s:.0f} s budget", flush=True)
            continue
        settings = ProfileSettings(**{**common, **overrides})
        print(
            f"[{suite}] {name}: {settings.source}, layers={settings.layers}, {settings.dtype} on {settings.device}",
            flush=True,
        )
        result = run_profile(settings, RESULTS / suite / name)
        gc.collect()  # free this configuration's models before building the next one
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        result["targets"] = check_targets(result)
        results[name] = result
        json_path, md_path = write_summary(suite, results, header)
        print(
            f"[{suite}] {name} done after {time.monotonic() - started:.0f} s; summary in {md_path}",
            flush=True,
        )
    return results
