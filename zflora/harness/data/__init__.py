"""Tasks, data and scoring: the paper's 18 real tasks and 3 embedded (generated, offline) ones.

    from zflora.harness.data import get_task, load_examples
    train = load_examples("embedded-math", "train", n=2000, seed=0)
    test = load_examples("gsm8k", "test", data_dir="data/gsm8k")   # or from the hub
    task = get_task("gsm8k")
    task.score(completions, test)                                  # {"accuracy": ...}

Modules: `registry` (Example, TaskSpec), `suite` (the task table and lookups), `formats`
(prompt templates), `hub` (hub / local file loading), `embedded` and `world` (the
generated tasks), `metrics` (answer extraction, accuracy, ROUGE), `cli` (`zflora tasks`).
"""

from zflora.harness.data.cli import add_tasks_parser
from zflora.harness.data.registry import Example, TaskSpec
from zflora.harness.data.suite import (
    EMBEDDED_TASKS,
    PAPER_TASKS,
    TASKS,
    describe_tasks,
    get_task,
    load_examples,
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
