"""User errors get a ZFLoRAError whose message names the culprit and the fix."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import randomize_adapter, tiny_model

import zflora
from zflora import ZFLoRAConfig, ZFLoRAError


@pytest.mark.parametrize("r", [0, -4, 2.5, True, "16"])
def test_bad_rank_is_refused(r):
    with pytest.raises(ZFLoRAError, match="ZFLoRAConfig.r: must be a positive integer"):
        ZFLoRAConfig(r=r)


@pytest.mark.parametrize("blocks", [("attn", "ffn"), (), ("moe",)])
def test_unknown_block_is_refused(blocks):
    with pytest.raises(ZFLoRAError, match=r"blocks: has unknown block name.*subset of \['attn', 'mlp'\]"):
        ZFLoRAConfig(blocks=blocks)


def test_block_order_is_canonical():
    assert ZFLoRAConfig(blocks=("mlp", "attn", "mlp")).blocks == ("attn", "mlp")
    assert ZFLoRAConfig(blocks="attn").blocks == ("attn",)


def test_unsupported_architecture_names_the_supported_list():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50))
    with pytest.raises(ZFLoRAError, match=r"unsupported architecture GPT2LMHeadModel.*llama, mistral, qwen2"):
        zflora.get_zflora_model(model, ZFLoRAConfig(r=4))


def test_non_causal_lm_is_refused():
    from transformers import LlamaConfig, LlamaModel

    model = LlamaModel(
        LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=50
        )
    )
    with pytest.raises(ZFLoRAError, match="AutoModelForCausalLM"):
        zflora.get_zflora_model(model)


def test_wrapping_twice_is_refused():
    zm = zflora.get_zflora_model(tiny_model())
    with pytest.raises(ZFLoRAError, match="already carries zFLoRA layers"):
        zflora.get_zflora_model(zm.model)


def test_adapter_name_errors():
    zm = zflora.get_zflora_model(tiny_model())
    with pytest.raises(ZFLoRAError, match="already exists"):
        zm.add_adapter("default", ZFLoRAConfig(r=4))
    with pytest.raises(ZFLoRAError, match="invalid"):
        zm.add_adapter("has.dot", ZFLoRAConfig(r=4))
    with pytest.raises(ZFLoRAError, match=r"no adapter named 'nope'; this model has \['default'\]"):
        zm.set_adapter("nope")


@pytest.fixture
def saved_adapter(tmp_path):
    zm = zflora.get_zflora_model(tiny_model(), ZFLoRAConfig(r=4))
    return zm, zm.save_adapter(tmp_path / "adapter")


def test_truncated_safetensors_is_refused(saved_adapter):
    zm, path = saved_adapter
    weights = path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ZFLoRAError, match="corrupt or truncated.*copy the file again or re-save"):
        zm.load_adapter(path)


def test_garbage_safetensors_is_refused(saved_adapter):
    zm, path = saved_adapter
    (path / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ZFLoRAError, match="corrupt or truncated"):
        zm.load_adapter(path)


def test_missing_adapter_path_is_refused(tmp_path):
    zm = zflora.get_zflora_model(tiny_model())
    with pytest.raises(ZFLoRAError, match="does not exist"):
        zm.load_adapter(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZFLoRAError, match="has no adapter_config.json"):
        zm.load_adapter(tmp_path / "empty")


def test_malformed_adapter_json_is_refused(saved_adapter):
    zm, path = saved_adapter
    config_path = path / "adapter_config.json"
    meta = json.loads(config_path.read_text())
    config_path.write_text("{not json")
    with pytest.raises(ZFLoRAError, match="not valid JSON"):
        zm.load_adapter(path)
    config_path.write_text(json.dumps({**meta, "config": {**meta["config"], "r": -1}}))
    with pytest.raises(ZFLoRAError, match=r"adapter_config.json: r: must be a positive integer"):
        zm.load_adapter(path)
    config_path.write_text(json.dumps({**meta, "config": {**meta["config"], "rank": 4}}))
    with pytest.raises(ZFLoRAError, match=r"unknown key\(s\) \['rank'\]"):
        zm.load_adapter(path)
    config_path.write_text(json.dumps({**meta, "surprise": 1}))
    with pytest.raises(ZFLoRAError, match="unknown field"):
        zm.load_adapter(path)
    config_path.write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    with pytest.raises(ZFLoRAError, match="not a zFLoRA adapter config"):
        zm.load_adapter(path)


def adapter_snapshot(zm) -> tuple:
    """A copy of every adapter's name, config and values, and which one is active."""
    return (
        zm.active_adapter,
        {
            name: (zm.adapter_configs[name], {k: v.clone() for k, v in zm.adapter_state_dict(name).items()})
            for name in zm.adapters
        },
    )


def assert_unchanged(zm, snapshot) -> None:
    active, adapters = snapshot
    assert zm.active_adapter == active and zm.adapters == list(adapters)
    for name, (config, tensors) in adapters.items():
        assert zm.adapter_configs[name] == config, name
        now = zm.adapter_state_dict(name)
        assert now.keys() == tensors.keys(), name
        assert all(torch.equal(now[key], value) for key, value in tensors.items()), name


@pytest.fixture
def loaded_differently(saved_adapter):
    """The saved adapter's name ("default") is held in memory with other values than the file's:
    a load that replaced it before failing would show."""
    zm, path = saved_adapter
    randomize_adapter(zm)
    return zm, path, adapter_snapshot(zm)


def test_adapter_whose_rank_disagrees_with_its_config_is_refused(loaded_differently):
    zm, path, snapshot = loaded_differently
    config_path = path / "adapter_config.json"
    meta = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**meta, "config": {**meta["config"], "r": 8}}))
    with pytest.raises(
        ZFLoRAError, match="expected .* for r=8 on this base; the file and its config disagree"
    ):
        zm.load_adapter(path)
    assert_unchanged(zm, snapshot)  # the failed load left nothing behind: names, configs, values


def test_adapter_whose_blocks_disagree_with_its_config_is_refused(loaded_differently):
    zm, path, snapshot = loaded_differently
    config_path = path / "adapter_config.json"
    meta = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**meta, "config": {**meta["config"], "blocks": ["attn"]}}))
    with pytest.raises(ZFLoRAError, match="does not match its config.*unexpected"):
        zm.load_adapter(path)
    assert_unchanged(zm, snapshot)


def test_non_finite_adapter_is_not_saved(tmp_path):
    zm = zflora.get_zflora_model(tiny_model(), ZFLoRAConfig(r=4))
    with torch.no_grad():
        next(iter(zm.adapter_state_dict().values()))[0, 0] = float("nan")
    with pytest.raises(ZFLoRAError, match="non-finite"):
        zm.save_adapter(tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_swap_on_a_plain_model_is_refused():
    with pytest.raises(ZFLoRAError, match="not a zFLoRA-fused model"):
        zflora.swap_adapter(tiny_model(), None)


def test_swap_with_a_too_wide_adapter_is_refused(tmp_path):
    zm = zflora.get_zflora_model(tiny_model(), ZFLoRAConfig(r=4))
    fused = zm.fuse()
    zm.add_adapter("wide", ZFLoRAConfig(r=12))
    with pytest.raises(ZFLoRAError, match="r=12 but this fused model has room for 4"):
        zflora.swap_adapter(fused, zm.adapter_weights("wide"))


def test_swap_accepts_a_narrower_adapter(tmp_path):
    """A fused model of width w serves any adapter with r <= w (the rest becomes zero padding)."""
    from conftest import randomize_adapter

    zm = zflora.get_zflora_model(tiny_model(), ZFLoRAConfig(r=8))
    fused = zm.fuse()
    zm.add_adapter("narrow", ZFLoRAConfig(r=3))
    zm.set_adapter("narrow")
    randomize_adapter(zm)
    zflora.swap_adapter(fused, zm.adapter_weights("narrow"))
    ids = torch.tensor([[4, 8, 15, 16, 23, 42]])
    expected = zm(input_ids=ids).logits
    assert ((fused(input_ids=ids).logits - expected).abs().max() / expected.abs().max()) < 1e-5


def test_swap_with_one_wrong_shaped_tensor_in_the_last_layer_changes_nothing(tmp_path):
    """Every key and shape is checked before the first write: no half-swapped model."""
    from safetensors.torch import load_file, save_file

    zm = zflora.get_zflora_model(tiny_model(tied=False), ZFLoRAConfig(r=4), adapter_name="a")
    randomize_adapter(zm, seed=1)
    fused = zm.fuse("a")
    before = {k: v.clone() for k, v in fused.state_dict().items()}
    zm.add_adapter("b", ZFLoRAConfig(r=4))
    zm.set_adapter("b")
    randomize_adapter(zm, seed=2)
    zm.save_adapter(tmp_path / "b", adapter_name="b")
    weights_file = tmp_path / "b" / "adapter_model.safetensors"
    tensors = load_file(str(weights_file))
    last = max(k for k in tensors if k.endswith("mlp.down_proj.A"))
    tensors[last] = tensors[last][:, :-1].contiguous()  # one column short, in the last layer
    save_file(tensors, str(weights_file))
    with pytest.raises(ZFLoRAError, match=r"down_proj.A has shape \(4, \d+\), expected"):
        zflora.swap_adapter(fused, tmp_path / "b")
    assert all(torch.equal(before[k], v) for k, v in fused.state_dict().items())
    assert fused.config.zflora["adapter"] == "a"
