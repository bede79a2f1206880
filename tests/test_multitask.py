"""MultiTaskModel: one fused model, many adapters, rows routed by task (grouped swaps or mixed batches;
the mixed pass itself: tests/test_mixed.py)."""

from __future__ import annotations

import random
import threading

import pytest
import torch
from conftest import VOCAB, randomize_adapter, tiny_model, tiny_tokenizer

import zflora
from zflora import ZFLoRAConfig, ZFLoRAError
from zflora.harness.generation import generate_text
from zflora.method.multitask import MANIFEST, read_manifest

TASKS = ("math", "chat", "sum")
PROMPTS = [
    "the cat sat on",
    "two plus three",
    "hello",
    "a b c d e f",
    "the mat",
    "hello world the cat",
    "five",
    "two",
]
NEW = 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Three random adapters of one tiny base, each also fused on its own (the reference)."""
    root = tmp_path_factory.mktemp("multitask")
    tokenizer = tiny_tokenizer()
    base = tiny_model("llama", tied=False, vocab=max(VOCAB, len(tokenizer)))
    base_generated = {p: generate_text(base, tokenizer, [p], max_new_tokens=NEW)[0] for p in PROMPTS}
    zm = zflora.get_zflora_model(base, ZFLoRAConfig(r=6), adapter_name=TASKS[0])
    for seed, task in enumerate(TASKS):
        if task != TASKS[0]:
            zm.add_adapter(task, ZFLoRAConfig(r=6, blocks=("attn",) if task == "sum" else ("attn", "mlp")))
        zm.set_adapter(task)
        randomize_adapter(zm, std=0.15, seed=seed + 1)
        zm.save_adapter(root / task, adapter_name=task)
    fused = {task: zm.fuse(task) for task in TASKS}
    reference = {
        task: {p: generate_text(fused[task], tokenizer, [p], max_new_tokens=NEW)[0] for p in PROMPTS}
        for task in TASKS
    }
    reference[None] = base_generated
    return {"root": root, "tokenizer": tokenizer, "zm": zm, "fused": fused, "reference": reference}


def make(setup, source="math"):
    fused = setup["zm"].fuse(source)  # any fused model of the base: its adapter is discarded
    return zflora.MultiTaskModel(fused, {t: setup["root"] / t for t in TASKS}, setup["tokenizer"])


def test_each_row_equals_its_tasks_fused_checkpoint_whatever_the_mix(setup):
    mt = make(setup)
    reference = setup["reference"]
    # the tasks really differ, so equality below is not vacuous
    assert len({tuple(reference[t][p] for p in PROMPTS) for t in (*TASKS, None)}) == 4
    rng = random.Random(0)
    for trial in range(3):
        rows = [(p, t) for p in PROMPTS for t in (*TASKS, None)]
        rng.shuffle(rows)
        rows = rows[: 12 + 6 * trial]
        out = mt.generate([p for p, _ in rows], [t for _, t in rows], max_new_tokens=NEW, batch_size=4)
        assert out == [reference[t][p] for p, t in rows]


def test_a_swapped_model_is_bit_identical_to_the_tasks_fused_checkpoint(setup):
    mt = make(setup, source="chat")
    assert mt.active is None
    for task in (*TASKS, "math"):
        mt.use(task)
        ours = mt.model.state_dict()
        for name, tensor in setup["fused"][task].state_dict().items():
            assert torch.equal(ours[name], tensor), (task, name)
    mt.use(None)
    assert mt.active is None and mt.model.config.zflora["adapter"] is None


def test_whole_batches_of_one_task_run_grouped_one_swap_per_task(setup, monkeypatch):
    """When each task fills its batches, grouping needs no more batches than packing: one swap per task."""
    from zflora.method import fusion

    mt = make(setup)
    calls = []
    real = fusion.swap_adapter
    monkeypatch.setattr(fusion, "swap_adapter", lambda m, a: calls.append(a) or real(m, a))
    tasks = ["chat", None, "math", "chat", "math", None]
    mt.generate(PROMPTS[:6], tasks, max_new_tokens=2, batch_size=2)
    assert [path for path, _ in mt.last_batches] == ["swap"] * 3
    assert len(calls) == 2  # the base is active at first: its group runs without a swap, then chat, math
    mt.generate(PROMPTS[:2], ["chat", "math"], max_new_tokens=2, batch_size=1)
    assert len(calls) == 3  # math was still active: its group runs first, then one swap to chat


def test_unknown_task_names_the_known_ones_and_the_model_keeps_working(setup):
    mt = make(setup)
    with pytest.raises(ZFLoRAError, match=r"row 1: unknown task 'algebra'; known tasks: chat, math, sum"):
        mt.generate(PROMPTS[:2], ["math", "algebra"], max_new_tokens=2)
    assert mt.generate(PROMPTS[:1], ["sum"], max_new_tokens=NEW) == [setup["reference"]["sum"][PROMPTS[0]]]
    with pytest.raises(ZFLoRAError, match="2 prompts but 1 tasks"):
        mt.generate(PROMPTS[:2], ["math"])
    with pytest.raises(ZFLoRAError, match="task name '../x' is not valid"):
        zflora.MultiTaskModel(setup["fused"]["math"], {"../x": setup["root"] / "math"})


def test_an_adapter_of_another_base_is_refused_with_its_task(setup, tmp_path):
    other = zflora.get_zflora_model(tiny_model("llama", tied=False, seed=7), ZFLoRAConfig(r=6))
    other.save_adapter(tmp_path / "foreign")
    with pytest.raises(ZFLoRAError, match="task 'foreign': adapter .* trained on another base"):
        zflora.MultiTaskModel(setup["zm"].fuse("math"), {"foreign": tmp_path / "foreign"})


def test_save_and_load_round_trip_holds_no_pickle(setup, tmp_path):
    mt = make(setup)
    mt.use("chat")
    path = mt.save(tmp_path / "mt")
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    assert MANIFEST in files and "base/config.json" in files and "base/model.safetensors" in files
    assert {f"adapters/{t}/adapter_model.safetensors" for t in TASKS} <= set(files)
    assert not [f for f in files if f.endswith((".pkl", ".pt", ".bin", ".pickle"))]
    assert sorted(read_manifest(path)["tasks"]) == sorted(TASKS)
    loaded = zflora.MultiTaskModel.from_directory(path)
    assert loaded.tasks == sorted(TASKS) and loaded.model.config.zflora["adapter"] is None
    # served frozen, like PEFT's inference models (serving benchmarks compare the two)
    assert not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters())
    rows = [(PROMPTS[0], "sum"), (PROMPTS[1], None), (PROMPTS[2], "chat")]
    expected = [setup["reference"][t][p] for p, t in rows]
    assert loaded.generate([p for p, _ in rows], [t for _, t in rows], max_new_tokens=NEW) == expected


def test_concurrent_callers_never_see_another_callers_adapter(setup):
    mt = make(setup)
    reference = setup["reference"]
    errors: list[str] = []

    def worker(task):
        for _ in range(3):
            out = mt.generate(PROMPTS[:3], [task] * 3, max_new_tokens=NEW)
            if out != [reference[task][p] for p in PROMPTS[:3]]:
                errors.append(f"{task}: {out}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in (*TASKS, None)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_built_from_a_checkpoint_directory_or_a_loaded_model_finds_its_tokenizer(setup, tmp_path):
    from transformers import AutoModelForCausalLM

    setup["fused"]["chat"].save_pretrained(tmp_path / "fused")
    setup["tokenizer"].save_pretrained(tmp_path / "fused")
    adapters = {t: setup["root"] / t for t in TASKS}
    expected = [setup["reference"]["sum"][PROMPTS[0]], setup["reference"][None][PROMPTS[1]]]
    for fused in (tmp_path / "fused", AutoModelForCausalLM.from_pretrained(tmp_path / "fused")):
        mt = zflora.MultiTaskModel(fused, adapters)  # no tokenizer= : the one saved with the model
        assert mt.generate(PROMPTS[:2], ["sum", None], max_new_tokens=NEW) == expected
    bare = zflora.MultiTaskModel(setup["zm"].fuse("math"), adapters)  # built in memory: no directory
    with pytest.raises(ZFLoRAError, match="has no tokenizer; pass tokenizer="):
        bare.generate(PROMPTS[:1], ["math"])


def test_a_gguf_tokenizer_sidecar_travels_with_the_saved_model(setup, tmp_path):
    """A base that came from a GGUF keeps that file's tokenizer metadata for `zflora export-gguf`."""
    from zflora.method.gguf.sidecar import SIDECAR

    setup["fused"]["chat"].save_pretrained(tmp_path / "fused")
    setup["tokenizer"].save_pretrained(tmp_path / "fused")
    (tmp_path / "fused" / SIDECAR).write_text('{"source": "a.gguf"}')
    mt = zflora.MultiTaskModel(tmp_path / "fused", {t: setup["root"] / t for t in TASKS})
    mt.save(tmp_path / "multi")
    assert (tmp_path / "multi" / "base" / SIDECAR).read_text() == '{"source": "a.gguf"}'
