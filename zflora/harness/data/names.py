"""The task names alone, in the suite's order: what params.yaml's task lists are checked against.

Validating params needs only these names, not the task table with its loaders and
formats (`zflora.harness.data.suite`), so a pipeline stage does not depend on the data
code it never runs. tests/test_data_registry.py checks that the two lists agree.
"""

EMBEDDED_TASKS = ("embedded-commonsense", "embedded-math", "embedded-summary")
PAPER_TASKS = (
    "boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc-easy", "arc-challenge", "openbookqa",
    "gsm8k", "svamp", "aqua", "multiarith", "addsub", "singleeq",
    "cnn-dailymail", "xsum", "samsum", "dialogsum",
)  # fmt: skip
TASK_NAMES = EMBEDDED_TASKS + PAPER_TASKS
