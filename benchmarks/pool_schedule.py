"""How the pipeline's DAG scales with workers: critical path, total work, and a list schedule.

    python benchmarks/pool_schedule.py --workspace .            # durations MLflow recorded for a run here
    python benchmarks/pool_schedule.py --config configs/paper-llama-3.2-1b.yaml --estimate
    python benchmarks/pool_schedule.py --workspace . --config configs/paper-llama-3.2-1b.yaml --estimate \
        --out docs/results/pool-scaling-<date>                  # both, table + plot

The stage graph is DVC's (dvc.yaml with the params file), the same graph `flows.pipeline
--pool` schedules. Each stage's duration is either what MLflow recorded for it (the
stage's run, start to end, plus `--overhead` seconds for what happens outside that run:
the process start, the worker's checkout, pull and push) or, with `--estimate`, a cost
model of a GPU run (below). For N = 1, 2, 4, ... 32 workers it prints the lower bound
max(critical path, total work / N) and the makespan of a list schedule that, like the
coordinator, starts a stage as soon as its upstream is done, taking ready stages in order of
their longest path to the end (HLFET); the ratio of the two says how close to ideal it is.

The estimate (no GPU was measured here): a training step costs
tokens x flops-per-token / (peak x MFU), with 6 N flops per token for full fine-tuning
(forward, backward, weight gradients) and 4 N for the adapter methods (no gradients for the
frozen weights), plus 2 N for activation checkpointing's second forward; N = 1.24e9 for
Llama-3.2-1B, peak = 989 TFLOP/s (H100 SXM, dense bf16), MFU = 0.35 (an assumption, typical
of single-GPU HF Trainer fine-tuning; change it with --mfu). A sequence averages
--tokens-per-example tokens. Evaluation decodes the test split in batches: per batch,
max_new_tokens steps of --decode-step-ms each, once per served form.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORKERS = (1, 2, 4, 8, 16, 32)


def stage_graph(workspace: Path) -> dict[str, list[str]]:
    """Stage name -> the stages it depends on, from DVC."""
    from dvc.repo import Repo

    with Repo(str(workspace)) as repo:
        graph = repo.index.graph
        name = lambda stage: stage.addressing.rsplit(":", 1)[-1]  # noqa: E731 - "dvc.yaml:train@x" from elsewhere
        return {name(s): [name(d) for d in graph.successors(s)] for s in graph.nodes}


def graph_for(config: Path) -> dict[str, list[str]]:
    """The graph of the project's dvc.yaml with another params file (in a scratch copy)."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("dvc.yaml", ".dvcignore"):
            shutil.copy(ROOT / name, Path(tmp) / name)
        shutil.copytree(ROOT / ".dvc", Path(tmp) / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
        shutil.copy(config, Path(tmp) / "params.yaml")
        subprocess.run(["git", "init", "-q", tmp], check=True)
        return stage_graph(Path(tmp))


def recorded_durations(workspace: Path, overhead: float) -> dict[str, float]:
    """Seconds per stage from the MLflow runs of `workspace`'s store (the newest run per stage)."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{workspace.resolve() / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list", order_by=["start_time ASC"])
    durations = {}
    for run in runs:
        stage = run.data.tags.get("dvc_stage")
        if stage and run.info.end_time and run.info.status == "FINISHED":
            durations[stage] = (run.info.end_time - run.info.start_time) / 1000 + overhead
    return durations


def estimated_durations(
    config: Path, graph: dict[str, list[str]], args: argparse.Namespace
) -> dict[str, float]:
    """A cost model of the GPU run `config` describes (see the module docstring)."""
    import yaml

    params = yaml.safe_load(config.read_text())
    train, tune, data, evaluate = params["train"], params["tune"], params["data"], params["evaluate"]
    tokens_per_step = train["batch_size"] * train.get("grad_accum", 1) * args.tokens_per_example
    checkpointing = 2 if train.get("gradient_checkpointing") else 0
    flops_per_second = args.peak_tflops * 1e12 * args.mfu

    def step_seconds(method: str) -> float:
        per_token = (6 if method == "fft" else 4) + checkpointing
        return tokens_per_step * per_token * args.params / flops_per_second

    steps = math.ceil(
        data["train_size"] * train.get("epochs", 1) / (train["batch_size"] * train.get("grad_accum", 1))
    )
    if train.get("max_steps", -1) > 0:
        steps = train["max_steps"]
    tune_steps = tune.get("max_steps") or steps
    tuned_tasks = tune.get("tasks") or data["tasks"]
    batches = math.ceil(data["test_size"] / evaluate["batch_size"])
    answer = evaluate.get("max_new_tokens") or args.max_new_tokens

    def eval_seconds(forms: int) -> float:
        return forms * batches * answer * args.decode_step_ms / 1000

    seeds = train.get("seeds", 1)
    durations = {}
    for stage in graph:
        name, _, item = stage.partition("@")
        method = item.rsplit("-", 1)[-1] if name in ("train", "evaluate") else item
        for known in ("zflora-eqparams", "zflora-mha", "lora-eqparams"):
            if item.endswith(known):
                method = known
        if name == "base":
            durations[stage] = 120.0  # download / load and fingerprint the base
        elif name == "prepare":
            durations[stage] = 60.0
        elif name == "tune":
            candidates = len(tune["learning_rates"].get(method, [0])) * len(
                tune.get("init_scales", {}).get(method, [0])
            )
            validation = (
                math.ceil(data["validation_size"] / evaluate["batch_size"])
                * answer
                * args.decode_step_ms
                / 1000
            )
            durations[stage] = (
                candidates * len(tuned_tasks) * (tune_steps * step_seconds(method) + validation)
            )
        elif name == "train":
            durations[stage] = seeds * steps * step_seconds(method)
        elif name == "evaluate":
            durations[stage] = eval_seconds(2 + (seeds - 1) if method != "fft" else seeds)
        elif name == "evaluate-base":
            durations[stage] = eval_seconds(1)
        elif name == "fuse":
            durations[stage] = 90.0
        elif name == "profile":
            durations[stage] = 600.0
        else:
            durations[stage] = 30.0
    return durations


def bottom_levels(graph: dict[str, list[str]], cost: dict[str, float]) -> dict[str, float]:
    """Longest path from each stage to the end of the pipeline, the stage included."""
    users: dict[str, list[str]] = {s: [] for s in graph}
    for stage, deps in graph.items():
        for dep in deps:
            users[dep].append(stage)
    levels: dict[str, float] = {}

    def level(stage: str) -> float:
        if stage not in levels:
            levels[stage] = cost[stage] + max((level(u) for u in users[stage]), default=0.0)
        return levels[stage]

    for stage in graph:
        level(stage)
    return levels


def list_schedule(graph: dict[str, list[str]], cost: dict[str, float], workers: int) -> float:
    """Makespan of HLFET list scheduling: when a worker frees, it takes the ready stage with the
    longest path to the end."""
    import heapq

    priority = bottom_levels(graph, cost)
    waiting = {s: set(deps) for s, deps in graph.items()}
    finished: set[str] = set()
    running: list[tuple[float, str]] = []
    now, free = 0.0, workers
    while len(finished) < len(graph):
        ready = sorted((s for s, deps in waiting.items() if deps <= finished), key=lambda s: -priority[s])
        for stage in ready[:free]:
            del waiting[stage]
            heapq.heappush(running, (now + cost[stage], stage))
            free -= 1
        now, stage = heapq.heappop(running)
        finished.add(stage)
        free += 1
        while running and running[0][0] == now:
            finished.add(heapq.heappop(running)[1])
            free += 1
    return now


def scaling(graph: dict[str, list[str]], cost: dict[str, float]) -> list[dict[str, float]]:
    critical = max(bottom_levels(graph, cost).values())
    total = sum(cost.values())
    rows = []
    for n in WORKERS:
        bound = max(critical, total / n)
        makespan = list_schedule(graph, cost, n)
        rows.append({"workers": n, "lower_bound_s": bound, "schedule_s": makespan, "ratio": makespan / bound})
    return rows


def markdown(
    title: str, stages: int, cost: dict[str, float], rows: list[dict[str, float]], graph: dict
) -> str:
    critical = max(bottom_levels(graph, cost).values())
    lines = [
        f"### {title}",
        "",
        f"{stages} stages, total work {sum(cost.values()) / 3600:.2f} h, critical path {critical / 3600:.2f} h.",
        "",
        "| workers | lower bound max(critical path, work / N) | list schedule | schedule / bound | speed-up vs 1 |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['workers']} | {row['lower_bound_s'] / 3600:.2f} h | {row['schedule_s'] / 3600:.2f} h | "
            f"{row['ratio']:.3f} | {rows[0]['schedule_s'] / row['schedule_s']:.1f}x |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, list[dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 3.8), squeeze=False)
    for ax, (title, rows) in zip(axes[0], results.items()):
        n = [r["workers"] for r in rows]
        ax.plot(n, [r["schedule_s"] / 3600 for r in rows], "o-", label="list schedule")
        ax.plot(n, [r["lower_bound_s"] / 3600 for r in rows], "k--", label="max(critical path, work / N)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(n, [str(x) for x in n])
        ax.set_xlabel("workers")
        ax.set_ylabel("wall time (h)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--workspace", type=Path, help="a workspace after a run: its dvc.yaml, params and mlflow.db"
    )
    p.add_argument("--overhead", type=float, default=0.0, help="seconds added to each recorded stage")
    p.add_argument("--config", type=Path, help="a params file to estimate (with --estimate)")
    p.add_argument("--estimate", action="store_true")
    p.add_argument("--params", type=float, default=1.24e9, help="model parameters (Llama-3.2-1B)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="H100 SXM dense bf16")
    p.add_argument("--mfu", type=float, default=0.35)
    p.add_argument("--tokens-per-example", type=float, default=300.0)
    p.add_argument(
        "--decode-step-ms",
        type=float,
        default=25.0,
        help="one decoding step of a batch (HF generate, 1B, GPU)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=float,
        default=64.0,
        help="answer budget when the params leave it to each task",
    )
    p.add_argument("--out", type=Path, help="folder for scaling.md, scaling.json and scaling.png")
    args = p.parse_args()
    results: dict[str, list[dict[str, float]]] = {}
    text = []
    if args.workspace:
        graph = stage_graph(args.workspace)
        cost = recorded_durations(args.workspace, args.overhead)
        missing = sorted(set(graph) - set(cost))
        if missing:
            print(f"no finished MLflow run for {missing}; run the pipeline first", file=sys.stderr)
            return 2
        title = f"{args.workspace.resolve().name}: recorded durations (+{args.overhead:g} s per stage)"
        results[title] = scaling(graph, cost)
        text.append(markdown(title, len(graph), cost, results[title], graph))
    if args.config and args.estimate:
        graph = graph_for(args.config)
        cost = estimated_durations(args.config, graph, args)
        title = f"{args.config.name}: estimated (H100, MFU {args.mfu:g})"
        results[title] = scaling(graph, cost)
        text.append(markdown(title, len(graph), cost, results[title], graph))
    if not results:
        p.error("give --workspace and/or --config with --estimate")
    print("\n".join(text))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "scaling.md").write_text("\n".join(text))
        (args.out / "scaling.json").write_text(
            json.dumps(
                {
                    "settings": vars(args)
                    | {"workspace": str(args.workspace), "config": str(args.config), "out": str(args.out)},
                    "results": results,
                },
                indent=2,
                default=str,
            )
        )
        plot(results, args.out / "scaling.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
