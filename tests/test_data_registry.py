"""The task registry's interface: names, lookups, options, scoring and the `zflora tasks` command."""

from __future__ import annotations

import argparse
import io
import json

import pytest

from zflora import ZFLoRAError
from zflora.harness.data import (
    EMBEDDED_TASKS,
    PAPER_TASKS,
    TASKS,
    Example,
    TaskSpec,
    add_tasks_parser,
    describe_tasks,
    get_task,
    load_examples,
)
from zflora.harness.data.cli import run_tasks_command

PAPER = {
    "commonsense": {
        "boolq",
        "piqa",
        "siqa",
        "hellaswag",
        "winogrande",
        "arc-easy",
        "arc-challenge",
        "openbookqa",
    },
    "math": {"gsm8k", "svamp", "aqua", "multiarith", "addsub", "singleeq"},
    "summary": {"cnn-dailymail", "xsum", "samsum", "dialogsum"},
}


def test_registry_holds_the_paper_suite_and_the_embedded_suite():
    assert EMBEDDED_TASKS == ("embedded-commonsense", "embedded-math", "embedded-summary")
    assert len(PAPER_TASKS) == 18
    assert set(TASKS) == set(EMBEDDED_TASKS) | set(PAPER_TASKS)
    for category, names in PAPER.items():
        assert {n for n in PAPER_TASKS if TASKS[n].category == category} == names


def test_the_name_list_params_are_checked_against_matches_the_suite():
    from zflora.harness.data import names

    assert names.EMBEDDED_TASKS == EMBEDDED_TASKS and names.PAPER_TASKS == PAPER_TASKS
    assert names.TASK_NAMES == tuple(TASKS)


def test_every_spec_is_consistent():
    for name, task in TASKS.items():
        assert isinstance(task, TaskSpec) and task.name == name
        assert task.category in ("commonsense", "math", "summary")
        assert task.metric == ("rouge" if task.category == "summary" else "accuracy")
        assert task.source == ("embedded" if name in EMBEDDED_TASKS else task.hub.dataset_id)
        assert task.max_new_tokens > 0 and task.description
        assert {"train", "test"} <= set(task.splits)
        hash(task)  # frozen specs can key dicts and sets


def test_unknown_task_names_the_known_ones():
    with pytest.raises(ZFLoRAError, match="unknown task 'gsm9k'.*embedded-math.*gsm8k"):
        get_task("gsm9k")


def test_unknown_split_and_option_are_rejected_clearly():
    with pytest.raises(ZFLoRAError, match="no split 'dev'.*test.*train"):
        load_examples("embedded-math", "dev")
    with pytest.raises(ZFLoRAError, match="validation"):
        load_examples("gsm8k", "validation")  # GSM8K has train and test only
    with pytest.raises(ZFLoRAError, match="does not take option.*'size'.*'n', 'seed'"):
        load_examples("embedded-math", "test", size=3)
    with pytest.raises(ZFLoRAError, match="n must be an integer >= 1"):
        load_examples("embedded-summary", "test", n=0)
    with pytest.raises(ZFLoRAError, match="reads no data_dir"):
        load_examples("embedded-math", "test", data_dir="somewhere")
    with pytest.raises(ZFLoRAError, match="limit"):
        load_examples("embedded-math", "test", limit=-1)


def test_limit_truncates_examples():
    examples = load_examples("embedded-math", "test", limit=7)
    assert len(examples) == 7 and all(isinstance(e, Example) for e in examples)


def test_accuracy_scores_extracted_answers():
    task = get_task("embedded-commonsense")
    examples = load_examples("embedded-commonsense", "test", n=8)
    gold = [e.target for e in examples]
    assert task.score(gold, examples) == {"accuracy": 1.0}
    wrong = [" " + "ABCD"[("ABCD".index(e.answer) + 1) % 4] for e in examples]
    assert task.score(wrong, examples) == {"accuracy": 0.0}
    half = gold[:4] + wrong[4:]
    assert task.score(half, examples) == {"accuracy": 0.5}


def test_math_accuracy_compares_numbers_not_strings():
    task = get_task("gsm8k")
    examples = [Example("a", "Q", " The answer is 1234.", "1234"), Example("b", "Q", " ...", "0.5")]
    assert task.score([" so 1,234.0 in total. The answer is 1,234.0.", " 0.50"], examples) == {
        "accuracy": 1.0
    }
    assert task.score([" The answer is 1235.", " no idea"], examples) == {"accuracy": 0.0}


def test_rouge_scores_are_f_measures_in_unit_interval():
    task = get_task("embedded-summary")
    examples = load_examples("embedded-summary", "test", n=6)
    perfect = task.score([e.target for e in examples], examples)
    assert set(perfect) == {"rouge1", "rouge2", "rougeL"}
    assert all(value == pytest.approx(1.0) for value in perfect.values())
    partial = task.score([" " + " ".join(e.answer.split()[:4]) for e in examples], examples)
    assert all(0.0 < partial[k] < perfect[k] for k in partial)
    unrelated = task.score([" zebra quantum violin" for _ in examples], examples)
    assert all(value == 0.0 for value in unrelated.values())


def test_score_refuses_mismatched_lengths():
    examples = load_examples("embedded-math", "test", n=3)
    with pytest.raises(ZFLoRAError, match="2 completions for 3 examples"):
        get_task("embedded-math").score(["1", "2"], examples)


def test_describe_tasks_rows_carry_the_table_columns():
    rows = describe_tasks()
    assert [row["name"] for row in rows] == list(TASKS)
    assert all(set(row) == {"name", "category", "metric", "source", "description"} for row in rows)
    assert next(row for row in rows if row["name"] == "gsm8k")["source"] == "openai/gsm8k"


def _tasks_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="zflora")
    add_tasks_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_tasks_command_prints_json_rows():
    args = _tasks_args(["tasks", "--json"])
    out = io.StringIO()
    assert args.func(args, out=out) == 0
    assert json.loads(out.getvalue()) == describe_tasks()


def test_tasks_command_prints_an_aligned_table():
    args = _tasks_args(["tasks"])
    out = io.StringIO()
    assert run_tasks_command(args, out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["name", "category", "metric", "source", "description"]
    assert len(lines) == 1 + len(TASKS)
    math_rows = [line for line in lines if " math " in line]
    assert len(math_rows) == 7 and {line.index(" math ") + 1 for line in math_rows} == {
        lines[0].index("category")
    }
