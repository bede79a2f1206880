"""The `report` stage's task: accuracy table and plot (task x method) and the latency tables."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from prefect import task

from zflora.harness.settings import headline_score
from zflora.method.atomic import atomic_dir

from .io import read_json
from .selection import SELECTION, candidate_label

METHOD_ORDER = ("base", "lora", "zflora", "lora-eqparams", "zflora-eqparams", "zflora-mha", "fft")


def collect(
    eval_root: Path,
    train_root: Path,
    tune_root: Path,
    tasks: list[str],
    methods: list[str],
    tuned_tasks: list[str] | None = None,
) -> dict[str, Any]:
    """Per method: each task's score (the mean over seeds when there are several) and range,
    forms agreement, trainable parameters, rank, and the learning rate with how it was chosen.
    The average is over `tuned_tasks` (default: all): a task left out of learning-rate
    selection is reported, not averaged."""
    averaged = [t for t in tasks if tuned_tasks is None or t in tuned_tasks]
    rows: dict[str, dict[str, Any]] = {}
    for method in methods:
        row: dict[str, Any] = {
            "scores": {},
            "ranges": {},
            "seeds": 1,
            "agreement": {},
            "trainable_parameters": 0 if method == "base" else None,
            "r": None,
        }
        for task_name in tasks:
            metrics = read_json(
                eval_root / task_name / method / "metrics.json", f"evaluation of {method} on {task_name}"
            )
            score = headline_score(metrics, metrics["metric"])
            row["scores"][task_name] = metrics.get("score_mean", score)
            row["ranges"][task_name] = [metrics.get("score_min", score), metrics.get("score_max", score)]
            row["seeds"] = max(row["seeds"], len(metrics.get("seeds", {})))
            row["agreement"][task_name] = metrics["prediction_agreement"]
            row["metric"] = row.get("metric", {}) | {
                task_name: "accuracy" if metrics["metric"] == "accuracy" else "ROUGE-L"
            }
            manifest = train_root / task_name / method / "method.json"
            if manifest.is_file():
                trained = read_json(manifest)
                row["trainable_parameters"] = trained.get("trainable_parameters")
                row["r"] = trained.get("r")
        selection_file = tune_root / method / SELECTION
        selection = read_json(selection_file) if selection_file.is_file() else {}
        row["learning_rate"] = selection.get("learning_rate")
        row["lr_tuned"] = bool(selection.get("tuned"))
        row["per_task"] = selection.get("per_task") or {}
        row["average"] = sum(row["scores"][t] for t in averaged) / len(averaged) if averaged else float("nan")
        rows[method] = row
    return rows


def accuracy_markdown(
    rows: dict[str, Any],
    tasks: list[str],
    title: str,
    tuned_tasks: list[str] | None = None,
    per_task: bool = False,
) -> str:
    metric_names = next(iter(rows.values()))["metric"]
    untuned = [t for t in tasks if tuned_tasks is not None and t not in tuned_tasks]
    header = [
        "method",
        "r",
        *[f"{t} ({metric_names[t]}){', untuned' if t in untuned else ''}" for t in tasks],
        "average" + (" (tuned tasks)" if untuned else ""),
        "trainable params",
        "learning rate",
        "forms agree",
    ]
    seeds = max(row["seeds"] for row in rows.values())
    spread = (
        f"Mean over {seeds} training seeds, [lowest, highest] in brackets. "
        if seeds > 1
        else "One training seed. "
    )
    lines = [
        f"# {title}",
        "",
        "Scores in percent on each task's test split (greedy decoding). "
        + spread
        + "LoRA is scored unmerged and merged, zFLoRA unfused and fused (first seed); 'forms agree' is the "
        "share of test examples on which those forms produced the same completion. Learning rates: "
        "'validation' = selected on a validation split held out from training (the tune stage), "
        "'fixed' = a single candidate"
        + (
            "; with several, each task's own best candidate on its validation split (per task, in task order)"
            if per_task
            else ""
        )
        + ". The -eqparams methods train at the rank whose trainable-parameter "
        "count matches the other method's at the shared rank."
        + (
            f" {', '.join(untuned)}: left out of the selection (tune.tasks), so trained at the best mean "
            "of the tuned tasks; shown, but not in the average."
            if untuned
            else ""
        ),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for method, row in rows.items():
        params = row["trainable_parameters"]
        agreement = min(row["agreement"].values())
        cells = [
            method,
            "-" if row["r"] is None else str(row["r"]),
            *[_score_cell(row, t) for t in tasks],
            f"{row['average']:.1f}",
            "-" if params is None else f"{params:,}",
            _rate_cell(row, tasks, per_task),
            f"{100 * agreement:.0f}%",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _rate_cell(row: dict[str, Any], tasks: list[str], per_task: bool) -> str:
    """'0.01 (validation)', '0.005 / 0.01 / 0.01 (validation, per task)', '0.002, init 0.08 ...', '-'."""
    if row["learning_rate"] is None:
        return "-"

    def one(choice: dict[str, Any]) -> str:
        scale = choice.get("init_scale")
        return f"{choice['learning_rate']:g}" + ("" if scale is None else f", init {scale:g}")

    if not row["lr_tuned"]:
        return f"{one(row)} (fixed)"
    chosen = [row["per_task"][t] for t in tasks if t in row["per_task"]] if per_task else []
    if chosen and len({one(c) for c in chosen}) > 1:
        return " / ".join(one(row["per_task"].get(t, row)) for t in tasks) + " (validation, per task)"
    return f"{one(chosen[0] if chosen else row)} (validation)"


def _score_cell(row: dict[str, Any], task_name: str) -> str:
    low, high = row["ranges"][task_name]
    cell = f"{row['scores'][task_name]:.1f}"
    return cell if row["seeds"] == 1 else f"{cell} [{low:.1f}, {high:.1f}]"


def tune_markdown(tune_root: Path, methods: list[str]) -> str:
    """The tune stage's candidates and mean validation scores per method ('' when nothing was tuned)."""
    lines = []
    for method in methods:
        path = tune_root / method / SELECTION
        selection = read_json(path) if path.is_file() else {}
        if not selection.get("tuned"):
            continue
        cells = []
        best = candidate_label(selection["learning_rate"], selection.get("init_scale"))
        for label, scores in selection["scores"].items():
            mean = scores.get("mean")
            text = "diverged" if mean is None else f"{mean:.1f}"
            cells.append(f"**{label}: {text}**" if label == best else f"{label}: {text}")
        lines.append(
            f"| {method} | {', '.join(selection['tasks'])} | {selection['steps']} | {'; '.join(cells)} |"
        )
    if not lines:
        return ""
    return (
        "\n".join(
            [
                "",
                "## Learning-rate selection (validation split)",
                "",
                "Mean validation score per candidate (first seed; steps: the budget per candidate, -1 = the train section's epochs); the best mean in bold. "
                "A candidate is a learning rate, or rate@init=<zFLoRA readers' initial std>; per task, the scores are in artifacts/tune/<method>/selection.json.",
                "",
                "| method | tasks | steps | candidate: mean validation score |",
                "|---|---|---|---|",
                *lines,
            ]
        )
        + "\n"
    )


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
        errors = [
            [y - rows[method]["ranges"][task][0] for task, y in zip(tasks, ys)],
            [rows[method]["ranges"][task][1] - y for task, y in zip(tasks, ys)],
        ]
        seeded = rows[method]["seeds"] > 1
        bars = ax.bar(xs, ys, width, label=method, yerr=errors if seeded else None, capsize=2)
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
    tune_root: str,
    profile_root: str,
    tasks: list[str],
    methods: list[str],
    profile_targets: list[str],
    title: str,
    out_dir: str,
    tuned_tasks: list[str] | None = None,
    per_task: bool = False,
) -> dict[str, Any]:
    import mlflow

    from .io import write_json

    methods = sorted(methods, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER))
    rows = collect(Path(eval_root), Path(train_root), Path(tune_root), tasks, methods, tuned_tasks)
    with atomic_dir(out_dir) as tmp:
        (tmp / "accuracy.md").write_text(
            accuracy_markdown(rows, tasks, title, tuned_tasks, per_task)
            + tune_markdown(Path(tune_root), methods)
        )
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
