"""Rows of several tasks in one forward pass (zflora.method.mixed, MultiTaskModel's mixed batches).

Each row must get what its task's own fused checkpoint gives: logits within TOLERANCE and
the same greedy tokens, for Llama, Qwen2 (q/k/v biases) and Mistral, tied and untied, with
left padding and shuffled rows. Adapters are random and non-zero everywhere (writers, P and
Q included), of two ranks (one below the fused width, so the norms' adapter gamma differs
from the base's) and one attention-only, so a missing term shows.
"""

from __future__ import annotations

import random

import pytest
import torch
from conftest import FAMILIES, FAMILY_IDS, VOCAB, randomize_adapter, tiny_model, tiny_tokenizer

import zflora
from zflora import ZFLoRAConfig, ZFLoRAError
from zflora.method.architectures import adapter_shapes
from zflora.method.fusion import swap_adapter
from zflora.method.generation import generate_text
from zflora.method.mixed import MixedAdapters, runs_of
from zflora.method.multitask import plan_batches

# fp32: the mixed pass adds each adapter's product after the base GEMM instead of inside it,
# so logits differ from the fused checkpoint's by rounding only (measured up to 1e-6 of the
# largest |logit|); 1e-5 leaves room for other BLAS builds and is far below any adapter's effect
TOLERANCE = 1e-5
ADAPTERS = {
    "wide": ZFLoRAConfig(r=6),
    "narrow": ZFLoRAConfig(r=4),
    "attn": ZFLoRAConfig(r=6, blocks=("attn",)),
}
PROMPTS = ["the cat sat on", "two plus three", "hello", "a b c d e f", "the mat", "hello world the cat"]
NEW = 6


def build(family: str, tied: bool):
    """A tiny base, three random non-zero adapters, each fused on its own, and a multi-task model."""
    tokenizer = tiny_tokenizer()
    base = tiny_model(family, tied=tied, vocab=max(VOCAB, len(tokenizer)))
    zm = zflora.get_zflora_model(base, ADAPTERS["wide"], adapter_name="wide")
    for seed, (task, config) in enumerate(ADAPTERS.items()):
        if task != "wide":
            zm.add_adapter(task, config)
        zm.set_adapter(task)
        randomize_adapter(zm, std=0.15, seed=seed + 11)
    fused = {task: zm.fuse(task) for task in ADAPTERS}
    plain = swap_adapter(zm.fuse("wide"), None)  # the base at fused width (I1: equals the base)
    adapters = {task: zm.adapter_weights(task) for task in ADAPTERS}
    mt = zflora.MultiTaskModel(zm.fuse("wide"), adapters, tokenizer)
    return mt, fused, plain, tokenizer


@pytest.fixture(scope="module", params=FAMILIES, ids=FAMILY_IDS)
def models(request):
    return build(*request.param)


def padded_batch(tokenizer, prompts):
    tokenizer.padding_side = "left"
    return tokenizer(prompts, return_tensors="pt", padding=True)


def test_each_row_gets_its_tasks_fused_logits(models):
    mt, fused, base, tokenizer = models
    assert mt.meta["width"] > ADAPTERS["narrow"].r  # the narrow task's norm gamma is not the base's
    rng = random.Random(1)
    rows = [(p, t) for p in PROMPTS for t in (*ADAPTERS, None)]
    rng.shuffle(rows)
    rows = rows[:14]
    tasks = [t for _, t in rows]
    batch = padded_batch(tokenizer, [p for p, _ in rows])
    assert (batch["attention_mask"] == 0).any()  # left padding is exercised
    mt.use(None)
    with torch.no_grad(), mt.mixed.rows(tasks):
        mixed = mt.model(**batch).logits
    with torch.no_grad():
        references = {t: fused[t](**batch).logits for t in ADAPTERS}
        references[None] = base(**batch).logits
    for i, task in enumerate(tasks):
        real = batch["attention_mask"][i].bool()
        ours, ref = mixed[i][real], references[task][i][real]
        scale = ref.abs().max()
        assert ((ours - ref).abs().max() / scale).item() < TOLERANCE, (i, task)
        if task is not None:  # the adapter changes this row by far more than the tolerance
            assert ((ref - references[None][i][real]).abs().max() / scale).item() > 100 * TOLERANCE


def test_mixed_generate_gives_each_rows_fused_tokens(models):
    mt, fused, base, tokenizer = models
    reference = {
        t: {p: generate_text(model, tokenizer, [p], max_new_tokens=NEW)[0] for p in PROMPTS}
        for t, model in [*fused.items(), (None, base)]
    }
    assert len({tuple(reference[t].values()) for t in reference}) == len(reference)  # tasks differ
    rng = random.Random(0)
    for trial in range(2):
        rows = [(p, t) for p in PROMPTS for t in (*ADAPTERS, None)]
        rng.shuffle(rows)
        rows = rows[: 10 + 6 * trial]
        out = mt.generate([p for p, _ in rows], [t for _, t in rows], max_new_tokens=NEW, batch_size=16)
        assert [path for path, _ in mt.last_batches] == ["mixed"]  # one batch, one pass per step
        assert out == [reference[t][p] for p, t in rows]
    # the hooks are gone and the model is the plain fused base again
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in mt.model.modules())
    for name, tensor in base.state_dict().items():
        assert torch.equal(mt.model.state_dict()[name], tensor), name


def test_per_task_state_is_the_adapters_own_tensors_and_cached_products(models):
    """Per task, the multi-task model holds the adapter's tensors, E·P and (untied) W_h·Q: nothing
    base-sized, and the model itself stays the one fused base."""
    mt, _, base, tokenizer = models
    mt.generate(PROMPTS[:4], ["wide", "narrow", None, "attn"], max_new_tokens=2)
    assert mt.last_batches[0][0] == "mixed"
    model = [*mt.model.parameters(), *mt.model.buffers()]
    model_storages = {t.untyped_storage().data_ptr() for t in model}
    held = tensors_held(mt, skip=(tokenizer,))  # the model too: nothing may hang off it either
    extra = {ptr: size for ptr, size in held.items() if ptr not in model_storages}
    d, vocab, tied = mt.meta["base_hidden_size"], mt.model.config.vocab_size, mt.meta["tied"]
    expected = 0
    for weights in mt.adapters.values():
        r = weights.config.r
        shapes = adapter_shapes(mt.model, weights.config.blocks, r, d, tied)
        numbers = sum(a * b for a, b in shapes.values()) + vocab * r * (1 if tied else 2)  # + E·P, W_h·Q
        expected += numbers * 4  # float32
    assert sum(extra.values()) == expected
    assert sum(t.numel() for t in mt.model.state_dict().values()) == sum(
        t.numel() for t in base.state_dict().values()
    )


def tensors_held(obj, skip, seen=None) -> dict[int, int]:
    """{storage pointer: bytes} of every tensor reachable from `obj`'s attributes, dicts and lists;
    modules are searched through their attributes too (hooks, caches), `skip` objects not at all."""
    seen = set() if seen is None else seen
    found: dict[int, int] = {}
    if id(obj) in seen or any(obj is s for s in skip):
        return found
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return {obj.untyped_storage().data_ptr(): obj.untyped_storage().nbytes()}
    if isinstance(obj, dict):
        children = [*obj.keys(), *obj.values()]
    elif isinstance(obj, (list, tuple, set)):
        children = list(obj)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        children = list(vars(obj).values())
    else:
        return found
    for child in children:
        found.update(tensors_held(child, skip, seen))
    return found


def test_plan_packs_rows_when_it_saves_batches_and_groups_otherwise():
    # one task: per-task batches (the plain fused model), whatever the batch size
    assert plan_batches(["a"] * 5, 2) == [[0, 1], [2, 3], [4]]
    # 4 tasks x 4 rows in batches of 16: grouping needs 4 batches, packing 1
    tasks = [f"t{i % 4}" for i in range(16)]
    assert plan_batches(tasks, 16) == [[0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15]]
    # whole batches per task: the same count either way, so grouped (every batch one task)
    tasks = ["a"] * 4 + ["b"] * 4
    assert plan_batches(tasks, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # 5 + 3 rows in batches of 4: grouped needs 2 + 1, packed 2
    assert plan_batches(["a"] * 5 + ["b"] * 3, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # the active task's rows lead
    assert plan_batches(["a", "b", None, "b"], 16, first="b") == [[1, 3, 0, 2]]
    for k, n, b in [(3, 10, 4), (8, 32, 16), (32, 128, 16), (1, 7, 3)]:
        tasks = [f"t{random.Random(n).randrange(k)}" for _ in range(n)]
        batches = plan_batches(tasks, b)
        assert sorted(row for batch in batches for row in batch) == list(range(n))
        assert all(len(batch) <= b for batch in batches)
    with pytest.raises(ZFLoRAError, match="batch_size must be a positive integer, got 0"):
        plan_batches(["a"], 0)


def test_single_task_batches_swap_and_mixed_ones_stay_at_the_base(models, monkeypatch):
    from zflora.method import fusion

    mt = models[0]
    mt.use(None)
    calls = []
    real = fusion.swap_adapter
    monkeypatch.setattr(fusion, "swap_adapter", lambda m, a: calls.append(a) or real(m, a))
    mt.generate(PROMPTS[:4], ["wide", "narrow", "wide", "narrow"], max_new_tokens=2, batch_size=2)
    assert [path for path, _ in mt.last_batches] == ["swap", "swap"] and len(calls) == 2
    mt.generate(PROMPTS[:4], ["narrow", None, "wide", "narrow"], max_new_tokens=2)
    assert mt.last_batches == [("mixed", ["narrow", "narrow", None, "wide"])]  # active narrow first
    assert len(calls) == 3 and calls[-1] is None  # one swap back to the base, none per task
    assert mt.active is None


def test_runs_and_misuse():
    assert runs_of(["a", "a", None, "b", "b", "a"]) == [(0, 2, "a"), (3, 5, "b"), (5, 6, "a")]
    assert runs_of([None, None]) == [] and runs_of([]) == []
    base = tiny_model("llama", tied=True)
    zm = zflora.get_zflora_model(base, ZFLoRAConfig(r=4))
    randomize_adapter(zm)
    fused = zm.fuse()
    swap_adapter(fused, None)
    mixed = MixedAdapters(fused, {"a": zm.adapter_weights("default")})
    with pytest.raises(ZFLoRAError, match=r"unknown task\(s\) \['b'\]; known tasks: a"):
        with mixed.rows(["a", "b"]):
            pass
    with pytest.raises(RuntimeError, match="batch of 3 rows, set for 2"), torch.no_grad():
        with mixed.rows(["a", None]):
            fused(torch.ones(3, 4, dtype=torch.long))
    assert all(not m._forward_hooks for m in fused.modules())  # removed even after an error
    swap_adapter(fused, zm.adapter_weights("default"))
    with pytest.raises(ZFLoRAError, match=r"holds adapter 'default'; mixed rows need its base state"):
        with mixed.rows(["a", None]):
            pass
