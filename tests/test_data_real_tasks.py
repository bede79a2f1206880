"""The paper's real tasks: fixtures in each hub schema parse into prompts and gold answers,
local file layouts and the LLM-Adapters format are read, and a missing hub dataset fails fast."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from zflora import ZFLoRAError
from zflora.harness.data import PAPER_TASKS, get_task, load_examples
from zflora.harness.data import hub as hub_module

FIXTURES = Path(__file__).parent / "fixtures" / "tasks"

GOLD = {
    "boolq": ["true", "false", "true"],
    "piqa": ["A", "B", "A"],
    "siqa": ["A", "B", "C"],
    "hellaswag": ["D", "A", "B"],
    "winogrande": ["A", "A", "B"],
    "arc-easy": ["C", "B", "B"],
    "arc-challenge": ["A", "B", "A"],
    "openbookqa": ["B", "C", "A"],
    "gsm8k": ["72", "1165", "10"],
    "svamp": ["51", "8", "3"],
    "aqua": ["B", "C", "D"],
    "multiarith": ["39", "8", "3"],
    "addsub": ["43", "26", "84"],
    "singleeq": ["10", "46", "7.5"],
}


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_every_paper_task_parses_its_fixture(name):
    task = get_task(name)
    examples = load_examples(name, "test", data_dir=str(FIXTURES / name))
    assert len(examples) == 3
    assert len({e.id for e in examples}) == 3
    for example in examples:
        assert example.prompt.endswith(("Answer:", "Summary:"))
        assert example.target.startswith(" ") and example.target.strip()
        assert example.answer
    if task.metric == "accuracy":
        assert [e.answer for e in examples] == GOLD[name]
    else:
        assert all(e.target.strip() == e.answer for e in examples)
        assert "\n" not in examples[0].answer


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_gold_targets_score_perfectly_and_wrong_ones_do_not(name):
    task = get_task(name)
    examples = load_examples(name, "test", data_dir=str(FIXTURES / name))
    perfect = task.score([e.target for e in examples], examples)
    assert all(value == pytest.approx(1.0) for value in perfect.values())
    shifted = [examples[(i + 1) % 3].target for i in range(3)]  # each gets another example's answer
    assert all(value < 1.0 for value in task.score(shifted, examples).values())


def test_multiple_choice_prompts_list_lettered_options():
    (first, second, _) = load_examples("arc-easy", "test", data_dir=str(FIXTURES / "arc-easy"))
    assert "\nA. leaves\nB. flowers\nC. roots\nD. seeds\nAnswer:" in first.prompt
    assert second.answer == "B"  # numeric labels ("1".."4") map to letters by position
    hellaswag = load_examples("hellaswag", "test", data_dir=str(FIXTURES / "hellaswag"))[2]
    assert "[header]" not in hellaswag.prompt and "[title]" not in hellaswag.prompt


def test_gsm8k_target_is_a_clean_worked_solution():
    example = load_examples("gsm8k", "test", data_dir=str(FIXTURES / "gsm8k"))[0]
    assert "<<" not in example.target and "####" not in example.target
    assert example.target.endswith("The answer is 72.")


def test_extraction_understands_common_answer_styles():
    assert get_task("piqa").extract(" B. stuff them with newspaper") == "B"
    assert get_task("aqua").extract(" 3x = 9, so x = 3. The answer is C.") == "C"
    assert get_task("hellaswag").extract(" the correct answer is ending4") == "D"
    assert get_task("winogrande").extract(" C") == ""  # not an option of a two-way task
    assert get_task("boolq").extract(" Yes, it is.") == "true"
    assert get_task("gsm8k").extract(" 48 + 24 = 72. The answer is 72.\nQuestion: 5") == "72"
    assert get_task("svamp").extract(" it costs $1,050.00") == "1050"
    assert get_task("samsum").extract(" Anna will call Ben.\nAnna: ok") == "Anna will call Ben."


def test_llm_adapters_json_is_detected_and_converted():
    examples = load_examples("addsub", "test", data_dir=str(FIXTURES / "llm-adapters"))
    assert [e.answer for e in examples] == ["43", "9", "2"]
    assert examples[0].prompt.endswith("How many seashells did she give to Sam?\nAnswer:")
    assert examples[0].target.endswith("The answer is 43.")
    assert get_task("addsub").score([e.target for e in examples], examples) == {"accuracy": 1.0}


def test_llm_adapters_commonsense_answers_map_to_letters(tmp_path):
    rows = [
        {"instruction": "Please choose the correct solution to the question: keep bread fresh\n\nSolution1: bag\n"
         "\nSolution2: sun\n\nAnswer format: solution1/solution2", "input": "",
         "output": "the correct answer is solution1", "answer": "solution1"},
        {"instruction": "Please answer with true or false: can penguins fly", "input": "",
         "output": "the correct answer is false", "answer": "false"},
    ]  # fmt: skip
    (tmp_path / "test.json").write_text(json.dumps(rows[:1]))
    (piqa,) = load_examples("piqa", "test", data_dir=str(tmp_path))
    assert piqa.answer == "A" and piqa.target == " the correct answer is solution1"
    assert get_task("piqa").score([piqa.target], [piqa]) == {"accuracy": 1.0}
    (tmp_path / "test.json").write_text(json.dumps(rows[1:]))
    (boolq,) = load_examples("boolq", "test", data_dir=str(tmp_path))
    assert boolq.answer == "false" and get_task("boolq").extract(boolq.target) == "false"


def test_local_files_may_be_parquet_shards_or_a_single_file(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (FIXTURES / "gsm8k" / "test.jsonl").read_text().splitlines()]
    shards = tmp_path / "hub_layout" / "data"
    shards.mkdir(parents=True)
    pq.write_table(pyarrow.Table.from_pylist(rows[:2]), shards / "test-00000-of-00002.parquet")
    pq.write_table(pyarrow.Table.from_pylist(rows[2:]), shards / "test-00001-of-00002.parquet")
    assert [e.answer for e in load_examples("gsm8k", "test", data_dir=str(tmp_path / "hub_layout"))] == GOLD[
        "gsm8k"
    ]
    export = tmp_path / "export" / "test"  # the layout of a refs/convert/parquet download
    export.mkdir(parents=True)
    pq.write_table(pyarrow.Table.from_pylist(rows), export / "0000.parquet")
    assert len(load_examples("gsm8k", "test", data_dir=str(tmp_path / "export"))) == 3
    single = FIXTURES / "gsm8k" / "test.jsonl"
    assert len(load_examples("gsm8k", "train", data_dir=str(single))) == 3


def test_commonsense_test_split_reads_the_validation_file():
    # BoolQ's hub test labels are hidden: "test" maps to the validation split, and its file name
    assert get_task("boolq").splits["test"] == "validation"
    assert len(load_examples("boolq", "test", data_dir=str(FIXTURES / "boolq"))) == 3
    assert len(load_examples("boolq", "validation", data_dir=str(FIXTURES / "boolq"))) == 3


def test_missing_local_file_says_which_names_are_accepted(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(
        ZFLoRAError, match=r"no file for split 'train'.*train\.\{jsonl,json,parquet,csv\}.*notes\.txt"
    ):
        load_examples("gsm8k", "train", data_dir=str(tmp_path))
    with pytest.raises(ZFLoRAError, match="does not exist"):
        load_examples("gsm8k", "train", data_dir=str(tmp_path / "absent"))


@pytest.mark.parametrize(
    "name,text",
    [("test.jsonl", ""), ("test.jsonl", "\n\n"), ("test.json", "[]"), ("test.csv", "question,answer\n")],
)
def test_an_empty_dataset_file_is_refused_naming_the_file(name, text, tmp_path):
    (tmp_path / name).write_text(text)
    with pytest.raises(
        ZFLoRAError, match=rf"task 'gsm8k': {re.escape(str(tmp_path / name))} holds no rows; put"
    ):
        load_examples("gsm8k", "test", data_dir=str(tmp_path))


def test_a_malformed_dataset_line_is_named_by_its_file_and_line(tmp_path):
    good = json.dumps({"question": "1+1?", "answer": "#### 2"})
    (tmp_path / "test.jsonl").write_text(f"{good}\n\n{good}\n{{not json\n{good}\n")
    path = re.escape(str(tmp_path / "test.jsonl"))
    with pytest.raises(
        ZFLoRAError, match=rf"task 'gsm8k': {path}:4 is not valid JSON \(.* at column 2\); fix"
    ):
        load_examples("gsm8k", "test", data_dir=str(tmp_path))
    (tmp_path / "test.jsonl").unlink()
    (tmp_path / "test.json").write_text(f"[\n{good},\n{{not json}}\n]")
    with pytest.raises(ZFLoRAError, match=r"cannot read .*test.json: .*line 3 column 2"):
        load_examples("gsm8k", "test", data_dir=str(tmp_path))


def test_rows_in_a_foreign_schema_fail_with_their_keys(tmp_path):
    (tmp_path / "test.jsonl").write_text(json.dumps({"text": "hello", "label": 1}) + "\n")
    with pytest.raises(ZFLoRAError, match=r"does not match the schema of openai/gsm8k.*\['label', 'text'\]"):
        load_examples("gsm8k", "test", data_dir=str(tmp_path))


def test_unlabeled_rows_are_skipped_with_a_warning(tmp_path):
    rows = [
        json.loads(line) for line in (FIXTURES / "winogrande" / "validation.jsonl").read_text().splitlines()
    ]
    rows[1]["answer"] = ""  # the hub's hidden test labels look like this
    (tmp_path / "validation.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.warns(UserWarning, match="skipped 1 row"):
        examples = load_examples("winogrande", "test", data_dir=str(tmp_path))
    assert len(examples) == 2


@pytest.mark.parametrize("name", ["boolq", "xsum", "addsub"])
def test_missing_hub_dataset_fails_fast_offline_naming_the_id_and_the_way_out(
    name, monkeypatch, tmp_path, hub_clients_online, network_calls
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    task = get_task(name)
    with pytest.raises(ZFLoRAError) as caught:
        task.load("test", cache_dir=str(tmp_path / "cache"))
    assert network_calls == []  # fails at once: no probe, no request, no retry
    message = str(caught.value)
    assert task.hub.dataset_id in message and "data_dir" in message
    assert ("HF_DATASETS_OFFLINE" in message) or ("hf download" in message)


def test_unreachable_hub_runs_offline_without_retrying(
    monkeypatch, tmp_path, hub_clients_online, network_calls
):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    probes = []
    monkeypatch.setattr(hub_module, "hub_reachable", lambda timeout=3.0: probes.append(timeout) or False)
    with pytest.raises(ZFLoRAError, match="openai/gsm8k.*unreachable"):
        load_examples("gsm8k", "test", cache_dir=str(tmp_path / "cache"))
    assert len(probes) == 1  # one probe decided it ...
    assert network_calls == []  # ... and the hub client then ran offline: no request, no retry


def test_forced_offline_restores_the_hub_flags():
    import datasets.config
    from huggingface_hub import constants

    before = (constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE)
    with hub_module.forced_offline():
        assert constants.HF_HUB_OFFLINE and datasets.config.HF_HUB_OFFLINE
    assert (constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE) == before


def test_hub_rows_convert_from_a_datasets_dataset_and_limit_stops_early(monkeypatch):
    import datasets

    from zflora.harness.data import registry

    rows = [json.loads(line) for line in (FIXTURES / "gsm8k" / "test.jsonl").read_text().splitlines()]
    asked = []

    def fake_hub(source, split, task, cache_dir=None):
        asked.append((source.dataset_id, source.config, split))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(registry, "load_hub_rows", fake_hub)
    assert [e.answer for e in load_examples("gsm8k", "test")] == GOLD["gsm8k"]
    assert [e.answer for e in load_examples("gsm8k", "test", limit=2)] == GOLD["gsm8k"][:2]
    assert asked[0] == ("openai/gsm8k", "main", "test")
