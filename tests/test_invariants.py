"""The method's invariants I1-I6 (docs/method.md), each as its own test, on every supported family."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import max_rel_diff, randomize_adapter, tiny_model
from transformers import AutoModelForCausalLM

import zflora
from zflora import ZFLoRAConfig, ZFLoRAError

IDS = torch.tensor([[5, 17, 33, 2, 60, 8, 41], [9, 9, 12, 70, 3, 44, 21]])


def test_zero_adapter_equals_base(family):
    """I1: a freshly initialised adapter (writers zero) reproduces the base logits."""
    base = tiny_model(*family)
    reference = base(input_ids=IDS).logits
    zm = zflora.get_zflora_model(base, ZFLoRAConfig(r=6))
    assert max_rel_diff(zm(input_ids=IDS).logits, reference) < 1e-5
    with zm.disable_adapters():
        assert torch.equal(zm(input_ids=IDS).logits, reference)


@pytest.mark.parametrize(
    "r,blocks", [(4, ("attn", "mlp")), (6, ("attn", "mlp")), (8, ("attn",)), (5, ("mlp",))]
)
def test_fused_equals_unfused(family, r, blocks):
    """I2: the fused export computes what the training form computes, for random adapters."""
    zm = zflora.get_zflora_model(tiny_model(*family), ZFLoRAConfig(r=r, blocks=blocks))
    randomize_adapter(zm)
    unfused = zm(input_ids=IDS).logits
    base = tiny_model(*family)(input_ids=IDS).logits
    assert max_rel_diff(unfused, base) > 1e-2  # the adapter really changes the model
    fused = zm.fuse()
    assert type(fused) is type(zm.model)
    assert fused.config.hidden_size == zm.d + zflora.fused_width(zm.model.config, r)
    assert max_rel_diff(fused(input_ids=IDS).logits, unfused) < 1e-5


def test_fused_export_reloads_with_stock_transformers(family, tmp_path):
    """I3: save_pretrained output reloads with stock AutoModelForCausalLM, equal logits and greedy tokens."""
    zm = zflora.get_zflora_model(tiny_model(*family), ZFLoRAConfig(r=6))
    randomize_adapter(zm)
    fused = zm.fuse()
    fused.save_pretrained(tmp_path / "fused")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "fused").eval()
    assert type(reloaded) is type(fused)
    unfused_logits = zm(input_ids=IDS).logits
    assert max_rel_diff(reloaded(input_ids=IDS).logits, unfused_logits) < 1e-5
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(IDS))
    tokens_unfused = zm.generate(IDS, **kwargs)
    assert torch.equal(fused.generate(IDS, **kwargs), tokens_unfused)
    assert torch.equal(reloaded.generate(IDS, **kwargs), tokens_unfused)


def test_fused_export_loads_without_zflora(tmp_path):
    """I3 in a fresh interpreter that never imports zflora."""
    zm = zflora.get_zflora_model(tiny_model("qwen2", tied=False), ZFLoRAConfig(r=6))
    randomize_adapter(zm)
    zm.fuse().save_pretrained(tmp_path / "fused")
    torch.save(zm(input_ids=IDS).logits, tmp_path / "expected.pt")
    torch.save(IDS, tmp_path / "ids.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "fused")!r}).eval()
        ids = torch.load({str(tmp_path / "ids.pt")!r}, weights_only=True)
        expected = torch.load({str(tmp_path / "expected.pt")!r}, weights_only=True)
        diff = ((model(input_ids=ids).logits - expected).abs().max() / expected.abs().max()).item()
        assert "zflora" not in sys.modules
        print(diff)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip().splitlines()[-1]) < 1e-5


def test_swap_then_swap_equals_fuse(family):
    """I4: swap(A) then swap(B) == fuse(B); swap(None) == base."""
    base_logits = tiny_model(*family)(input_ids=IDS).logits
    zm = zflora.get_zflora_model(tiny_model(*family), ZFLoRAConfig(r=6), adapter_name="a")
    randomize_adapter(zm, seed=1)
    zm.add_adapter("b", ZFLoRAConfig(r=6, blocks=("attn",)))
    zm.set_adapter("b")
    randomize_adapter(zm, seed=2)
    fused_b = zm.fuse("b")
    fused = zm.fuse("a")
    a_logits = fused(input_ids=IDS).logits
    zflora.swap_adapter(fused, zm.adapter_weights("b"))
    assert max_rel_diff(fused(input_ids=IDS).logits, fused_b(input_ids=IDS).logits) < 1e-6
    zflora.swap_adapter(fused, zm.adapter_weights("a"))
    assert max_rel_diff(fused(input_ids=IDS).logits, a_logits) < 1e-6
    zflora.swap_adapter(fused, None)
    assert max_rel_diff(fused(input_ids=IDS).logits, base_logits) < 1e-5
    assert fused.config.zflora["adapter"] is None


def test_swap_overwrites_slices_in_place(tmp_path):
    """Swapping reallocates nothing and leaves every base slice bit-identical."""
    zm = zflora.get_zflora_model(tiny_model("llama", tied=False), ZFLoRAConfig(r=6))
    randomize_adapter(zm)
    zm.save_adapter(tmp_path / "a")
    fused = zm.fuse()
    d = zm.d
    pointers = {name: p.data_ptr() for name, p in fused.named_parameters()}
    before = {name: p.detach().clone() for name, p in fused.named_parameters()}

    def base_part(name, tensor):
        if tensor.dim() == 1 or name.endswith(("o_proj.weight", "down_proj.weight")):
            return tensor[:d]  # norms and writers: the first d rows
        return tensor[:, :d]  # embedding, readers, head: the first d columns

    for adapter in (None, tmp_path / "a", None):
        zflora.swap_adapter(fused, adapter)
    assert pointers == {name: p.data_ptr() for name, p in fused.named_parameters()}
    for name, p in fused.named_parameters():
        assert torch.equal(base_part(name, p), base_part(name, before[name])), name


def test_training_changes_only_adapter_parameters(family):
    """I5: optimiser steps move the adapter; base weights stay bit-identical."""
    base = tiny_model(*family)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    zm = zflora.get_zflora_model(base, ZFLoRAConfig(r=4))
    trainable = {n for n, p in zm.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(".default") for n in trainable)
    adapters = zm.adapter_state_dict()
    adapter_before = {k: v.clone() for k, v in adapters.items()}
    # no weight decay: a matrix may change only because a gradient reached it
    optimizer = torch.optim.AdamW([p for p in zm.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    reached = set()
    for _ in range(3):  # step 1 moves the writers; from step 2 on the readers see non-zero channels
        loss = zm(input_ids=IDS, labels=IDS).loss
        loss.backward()
        reached |= {k for k, v in adapters.items() if v.grad is not None and v.grad.abs().sum() > 0}
        optimizer.step()
        optimizer.zero_grad()
    assert reached == set(adapters)  # every adapter matrix, readers included, received gradient
    changed = [k for k, v in adapters.items() if not torch.equal(v, adapter_before[k])]
    assert len(changed) == len(adapter_before)
    after = zm.unload().state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_adapter_refuses_another_base(tmp_path):
    """I6: an adapter saved for base X refuses to load onto base Y (fingerprint mismatch)."""
    zm = zflora.get_zflora_model(tiny_model("llama", seed=0), ZFLoRAConfig(r=4))
    zm.save_adapter(tmp_path / "adapter")
    same_shapes_other_weights = zflora.get_zflora_model(tiny_model("llama", seed=1), ZFLoRAConfig(r=4))
    with pytest.raises(ZFLoRAError, match="another base model.*weights differ"):
        same_shapes_other_weights.load_adapter(tmp_path / "adapter")
    other_shapes = zflora.get_zflora_model(tiny_model("llama", hidden=32), ZFLoRAConfig(r=4))
    with pytest.raises(ZFLoRAError, match="hidden_size: adapter has 64, model has 32"):
        other_shapes.load_adapter(tmp_path / "adapter")
    fused_other = same_shapes_other_weights.fuse()
    with pytest.raises(ZFLoRAError, match="another base model"):
        zflora.swap_adapter(fused_other, tmp_path / "adapter")
    # the same base, reloaded, accepts it
    again = zflora.get_zflora_model(tiny_model("llama", seed=0), ZFLoRAConfig(r=4), adapter_name="x")
    assert again.load_adapter(tmp_path / "adapter") == "default"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fingerprint_survives_dtype_cast(dtype):
    """The same weights in half precision match the fingerprint (adapters follow a base across dtypes)."""
    from zflora.method.fingerprint import base_fingerprint, same_base

    model = tiny_model("llama")
    assert same_base(base_fingerprint(model), base_fingerprint(tiny_model("llama").to(dtype)))
    assert not same_base(base_fingerprint(model), base_fingerprint(tiny_model("llama", seed=3)))


HALF_TOLERANCE = 2e-2  # bfloat16 keeps 8 significant bits: about 0.4% per rounding


def test_invariants_hold_in_bfloat16():
    """I1, I2 and I4 on a bfloat16 base, within HALF_TOLERANCE of the logits' scale; adapters stay float32."""
    base = tiny_model("llama", tied=False).to(torch.bfloat16)
    reference = base(input_ids=IDS).logits.float()
    zm = zflora.get_zflora_model(base, ZFLoRAConfig(r=6), adapter_name="a")
    assert {v.dtype for v in zm.adapter_state_dict().values()} == {torch.float32}  # as PEFT does for LoRA
    assert max_rel_diff(zm(input_ids=IDS).logits.float(), reference) < HALF_TOLERANCE  # I1
    randomize_adapter(zm, seed=1)
    unfused = zm(input_ids=IDS).logits.float()
    assert max_rel_diff(unfused, reference) > 5 * HALF_TOLERANCE  # the adapter really changes the model
    fused = zm.fuse("a")
    assert next(fused.parameters()).dtype == torch.bfloat16
    assert max_rel_diff(fused(input_ids=IDS).logits.float(), unfused) < HALF_TOLERANCE  # I2
    zm.add_adapter("b", ZFLoRAConfig(r=6))
    zm.set_adapter("b")
    randomize_adapter(zm, seed=2)
    fused_b = zm.fuse("b")
    zflora.swap_adapter(fused, zm.adapter_weights("b"))  # I4: the same slices as fusing b directly
    assert all(torch.equal(x, y) for x, y in zip(fused.state_dict().values(), fused_b.state_dict().values()))
    zflora.swap_adapter(fused, None)
    assert max_rel_diff(fused(input_ids=IDS).logits.float(), reference) < HALF_TOLERANCE


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_an_adapter_trained_in_float32_loads_on_the_same_base_in_half_precision(tmp_path, dtype):
    zm = zflora.get_zflora_model(tiny_model("llama"), ZFLoRAConfig(r=4))
    randomize_adapter(zm)
    zm.save_adapter(tmp_path / "adapter")
    half = zflora.ZFLoRAModel.from_pretrained(tiny_model("llama").to(dtype), tmp_path / "adapter")
    assert half.active_adapter == "default"
    assert max_rel_diff(half(input_ids=IDS).logits.float(), zm(input_ids=IDS).logits) < 5e-2


def test_from_pretrained_is_wrap_and_load(tmp_path):
    """ZFLoRAModel.from_pretrained(base, adapter_dir): the one way to rebuild a trained model."""
    zm = zflora.get_zflora_model(tiny_model("qwen2", tied=False), ZFLoRAConfig(r=5, blocks=("mlp",)))
    randomize_adapter(zm)
    zm.save_adapter(tmp_path / "adapter")
    again = zflora.ZFLoRAModel.from_pretrained(tiny_model("qwen2", tied=False), tmp_path / "adapter")
    assert again.adapter_configs["default"] == zm.adapter_configs["default"]
    assert torch.equal(again(input_ids=IDS).logits, zm(input_ids=IDS).logits)
    tiny_model("qwen2", tied=False).save_pretrained(tmp_path / "base")
    from_disk = zflora.ZFLoRAModel.from_pretrained(tmp_path / "base", tmp_path / "adapter", adapter_name="x")
    assert from_disk.active_adapter == "x"
    assert torch.equal(from_disk(input_ids=IDS).logits, zm(input_ids=IDS).logits)
