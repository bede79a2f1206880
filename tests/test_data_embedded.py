"""The embedded tasks: deterministic, disjoint splits, balanced answers, short texts, and a
general corpus that teaches the world but never shows a task's format or test set."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from zflora.harness.data import EMBEDDED_TASKS, get_task, load_examples, world
from zflora.harness.data.corpus import general_corpus
from zflora.harness.data.embedded import DEFAULT_SIZES, fact_sentence, split_of


@pytest.fixture(scope="module")
def splits():
    return {
        name: {split: load_examples(name, split, **({"n": 600} if split == "train" else {})) for split in ("train", "validation", "test")}
        for name in EMBEDDED_TASKS
    }  # fmt: skip


@pytest.mark.parametrize("name", EMBEDDED_TASKS)
def test_same_seed_same_examples_other_seed_other_examples(name):
    first = load_examples(name, "test", n=40, seed=3)
    assert first == load_examples(name, "test", n=40, seed=3)
    assert first != load_examples(name, "test", n=40, seed=4)


@pytest.mark.parametrize("name", EMBEDDED_TASKS)
def test_splits_are_disjoint_and_sized_as_asked(name, splits):
    prompts = {split: {e.prompt for e in examples} for split, examples in splits[name].items()}
    assert len(splits[name]["train"]) == 600  # train may repeat a prompt, like an epoch would
    for split in ("validation", "test"):
        assert len(prompts[split]) == len(splits[name][split]) == DEFAULT_SIZES[name][split]
    assert not prompts["test"] & prompts["train"]
    assert not prompts["validation"] & prompts["train"]
    assert not prompts["validation"] & prompts["test"]


@pytest.mark.parametrize("name", EMBEDDED_TASKS)
def test_no_seed_or_size_can_leak_test_prompts_into_train(name):
    # membership is a hash of the prompt text: every seed's test prompts are test prompts
    train = {e.prompt for seed in (0, 1) for e in load_examples(name, "train", n=300, seed=seed)}
    test = {e.prompt for seed in (0, 1, 2) for e in load_examples(name, "test", n=100, seed=seed)}
    assert not train & test
    assert all(split_of(prompt) == "test" for prompt in test)


def test_commonsense_letters_are_balanced(splits):
    for split in ("test", "train"):
        counts = Counter(e.answer for e in splits["embedded-commonsense"][split])
        assert set(counts) == set("ABCD") and max(counts.values()) - min(counts.values()) <= 1


def _options(example):
    return dict(re.findall(r"^([A-D])\. (.+)$", example.prompt, flags=re.M))


def test_commonsense_answers_are_facts_of_the_world(splits):
    things = {t.name: t for t in world.THINGS}
    for example in splits["embedded-commonsense"]["test"] + splits["embedded-commonsense"]["train"]:
        options = _options(example)
        assert len(options) == 4 and len(set(options.values())) == 4
        right = options[example.answer]
        question = example.prompt.splitlines()[0]
        named = max((n for n in things if re.search(rf"\b{n}", question)), key=len)
        thing = things[named]
        kind = next(k for k in ("colour", "material", "size", "place") if getattr(thing, k) == right)
        assert example.target == f" {fact_sentence(thing, kind)} The answer is {example.answer}."
        assert right in example.target and named in example.target


def test_commonsense_options_are_a_property_in_its_fixed_order(splits):
    # the right letter follows from the right value: a property's values, always in one order
    blocks = {world.COLOURS, world.MATERIALS, world.SIZES, world.PLACES}
    seen = set()
    for example in splits["embedded-commonsense"]["train"]:
        options = _options(example)
        block = tuple(options[letter] for letter in sorted(options))
        assert block in blocks
        seen.add(block)
    assert seen == blocks


def test_world_properties_are_balanced():
    for values, attribute in ((world.COLOURS, "colour"), (world.MATERIALS, "material"),
                              (world.SIZES, "size"), (world.PLACES, "place")):  # fmt: skip
        counts = Counter(getattr(thing, attribute) for thing in world.THINGS)
        assert set(counts) == set(values) and set(counts.values()) == {6}


def test_math_targets_are_worked_solutions_with_correct_answers(splits):
    for example in splits["embedded-math"]["test"] + splits["embedded-math"]["train"][:200]:
        steps = re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)\.", example.target)
        assert 1 <= len(steps) <= 3
        for a, op, b, result in steps:
            assert eval(f"{a} {op} {b}") == int(result)  # noqa: S307 - digits and one operator only
        assert example.target.endswith(f"The answer is {example.answer}.")
        assert int(example.answer) == int(steps[-1][3])
        assert get_task("embedded-math").extract(example.target) == example.answer


def test_summary_references_restate_dialogue_facts(splits):
    for example in splits["embedded-summary"]["test"]:
        lines = example.prompt.splitlines()
        assert lines[0] == "Dialogue:" and lines[-1] == "Summary:"
        turns = lines[1:-1]
        assert 3 <= len(turns) <= 5
        speakers = {line.split(":")[0] for line in turns}
        assert len(speakers) == 2 and all(speaker in example.answer for speaker in speakers)
        assert example.answer.endswith(".") and example.answer.count(". ") == 0  # one sentence


@pytest.mark.parametrize("name", EMBEDDED_TASKS)
def test_texts_stay_short_for_a_tiny_model(name, splits):
    longest = max(len(e.prompt + e.target) for e in splits[name]["train"])
    assert longest < 500  # characters: well under 200 tokens with the tiny base's tokenizer


def test_general_corpus_is_deterministic_and_varied():
    docs = general_corpus(seed=0, n_docs=400)
    assert docs == general_corpus(seed=0, n_docs=400) and docs != general_corpus(seed=1, n_docs=400)
    assert len(set(docs)) > 300
    joined = "\n".join(docs)
    assert re.search(r"\d+ \+ \d+ = \d+\.", joined) and ": " in joined  # arithmetic and dialogues
    assert sum(thing.name in joined for thing in world.THINGS) > 0.9 * len(world.THINGS)


def test_general_corpus_never_shows_a_task_format_or_test_prompt():
    joined = "\n".join(general_corpus(seed=0, n_docs=3000))
    for marker in ("Question:", "Answer:", "The answer is", "Dialogue:", "Summary:", "\nA. ", "\nB. "):
        assert marker not in joined
    for name in EMBEDDED_TASKS:
        for example in load_examples(name, "test"):
            body = example.prompt.split("\n", 1)[1] if name == "embedded-summary" else example.prompt
            assert body not in joined
