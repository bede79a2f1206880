"""The `report` stage's task: accuracy table and plot (task x method) and the latency tables."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from prefect import task

from zflora.method.atomic import atomic_dir

from .io import read_json

METHOD_ORDER = ("base", "lora", "zflora", "zflora-mha", "fft")


def headline_score(metrics: dict[str, Any]) -> float:
    """Accuracy, or ROUGE-L for summarisation, in percent."""
    key = "accuracy" if metrics["metric"] == "accuracy" else "rougeL"
    return 100.0 * metrics[key]


def collect(eval_root: Path, train_root: Path, tasks: list[str], methods: list[str]) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    for method in methods:
        row: dict[str, Any] = {"scores": {}, "agreement": {}, "trainable_parameters": None}
        for task_name in tasks:
            metrics = read_json(
                eval_root / task_name / method / "metrics.json", f"evaluation of {method} on {task_name}"
            )
            row["scores"][task_name] = headline_score(metrics)
            row["agreement"][task_name] = metrics["prediction_agreement"]
            row["metric"] = row.get("metric", {}) | {
                task_name: "accuracy" if metrics["metric"] == "accuracy" else "ROUGE-L"
            }
            manifest = train_root / task_name / method / "method.json"
            if manifest.is_file():
                row["trainable_parameters"] = read_json(manifest).get("trainable_parameters")
        row["average"] = sum(row["scores"].values()) / len(tasks)
        rows[method] = row
    return rows


def accuracy_markdown(rows: dict[str, Any], tasks: list[str], title: str) -> str:
    metric_names = next(iter(rows.values()))["metric"]
    header = [
        "method",
        *[f"{t} ({metric_names[t]})" for t in tasks],
        "average",
        "trainable params",
        "forms agree",
    ]
    lines = [
        f"# {title}",
        "",
        "Scores in percent on each task's test split (greedy decoding). "
        "LoRA is scored unmerged and merged, zFLoRA unfused and fused; 'forms agree' is the share of "
        "test examples on which those forms produced the same completion.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for method, row in rows.items():
        params = row["trainable_parameters"]
        agreement = min(row["agreement"].values())
        cells = [
            method,
            *[f"{row['scores'][t]:.1f}" for t in tasks],
            f"{row['average']:.1f}",
            "-" if params is None else f"{params:,}",
            f"{100 * agreement:.0f}%",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def accuracy_plot(rows: dict[str, Any], tasks: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(rows)
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(1.8 + 2.2 * len(tasks), 4.2))
    for i, method in enumerate(methods):
        xs = [t + (i - (len(methods) - 1) / 2) * width for t in range(len(tasks))]
        ys = [rows[method]["scores"][task] for task in tasks]
        bars = ax.bar(xs, ys, width, label=method)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(tasks)), [t.removeprefix("embedded-") for t in tasks])
    ax.set_ylabel("score (%)  accuracy / ROUGE-L")
    ax.set_ylim(0, 105)
    ax.set_title("Accuracy by task and method")
    ax.legend(ncols=len(methods), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@task(name="build-report")
def build_report(
    eval_root: str,
    train_root: str,
    profile_root: str,
    tasks: list[str],
    methods: list[str],
    profile_targets: list[str],
    title: str,
    out_dir: str,
) -> dict[str, Any]:
    import mlflow

    from .io import write_json

    methods = sorted(methods, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER))
    rows = collect(Path(eval_root), Path(train_root), tasks, methods)
    with atomic_dir(out_dir) as tmp:
        (tmp / "accuracy.md").write_text(accuracy_markdown(rows, tasks, title))
        write_json(tmp / "accuracy.json", rows)
        accuracy_plot(rows, tasks, tmp / "accuracy.png")
        latency = ["# Latency", ""]
        for target in profile_targets:
            source = Path(profile_root) / target
            latency.append(
                (source / "profile.md")
                .read_text()
                .replace("# Latency profile", f"## Latency profile ({target})", 1)
            )
            for plot in ("prefill", "decode", "switch"):
                if (source / f"{plot}.png").is_file():
                    shutil.copy(source / f"{plot}.png", tmp / f"latency-{target}-{plot}.png")
                    latency.append(f"![{plot} ({target})](latency-{target}-{plot}.png)\n")
        (tmp / "latency.md").write_text("\n".join(latency))
    mlflow.log_artifacts(out_dir, artifact_path="reports")
    return {method: {"average": row["average"], **row["scores"]} for method, row in rows.items()}
