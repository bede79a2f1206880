"""Tasks, data and scoring: the paper's 18 real tasks and 3 embedded (generated, offline) ones.

    from zflora.harness.data import get_task, load_examples
    train = load_examples("embedded-math", "train", n=2000, seed=0)
    test = load_examples("gsm8k", "test", data_dir="data/gsm8k")   # or from the hub
    task = get_task("gsm8k")
    task.score(completions, test)                                  # {"accuracy": ...}

Modules: `example` (Example), `registry` (TaskSpec), `suite` (the task table and lookups), `formats`
(prompt templates), `hub` (hub / local file loading), `embedded` and `world` (the
generated tasks), `metrics` (answer extraction, accuracy, ROUGE), `cli` (`zflora tasks`),
`names` (the task names alone: what params.yaml is validated against). Names here are
imported on first use; project code imports from the defining modules.
"""

from zflora._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "add_tasks_parser": ".cli",
        "Example": ".example",
        "TaskSpec": ".registry",
        "EMBEDDED_TASKS": ".suite",
        "PAPER_TASKS": ".suite",
        "TASKS": ".suite",
        "describe_tasks": ".suite",
        "get_task": ".suite",
        "load_examples": ".suite",
    },
)

__all__ = [
    "EMBEDDED_TASKS",
    "PAPER_TASKS",
    "TASKS",
    "Example",
    "TaskSpec",
    "add_tasks_parser",
    "describe_tasks",
    "get_task",
    "load_examples",
]
