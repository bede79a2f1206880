"""The embedded tiny base model: tokenizer, settings validation, pretraining output, and base resolution."""

from __future__ import annotations

import json

import pytest
import torch

from zflora import ZFLoRAError
from zflora.harness.data.corpus import general_corpus
from zflora.harness.tinybase import TinyBaseSettings, pretrain_tiny_base, resolve_base_model, train_tokenizer

SMALL = dict(
    vocab_size=400, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64,
    max_seq_len=128, block_size=64, steps=6, batch_size=4, corpus_docs=300, learning_rate=1e-2, warmup_steps=2,
)  # fmt: skip


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "base"
    metrics = pretrain_tiny_base(out, TinyBaseSettings(**SMALL), progress=False)
    return out, metrics


def test_tokenizer_round_trips_text_and_reloads_with_auto_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = train_tokenizer(general_corpus(seed=0, n_docs=300), vocab_size=500)
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    text = "Question: What colour is the mug?\nA. white\nAnswer: 7 + 5 = 12. Zürich!"
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id  # <s> first, as Llama tokenizers do
    assert tokenizer.decode(ids, skip_special_tokens=True) == text  # byte-level: nothing is lost
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(text).input_ids == ids and len(reloaded) == len(tokenizer) <= 500


def test_tokenizer_refuses_a_vocabulary_below_the_byte_alphabet():
    with pytest.raises(ZFLoRAError, match="vocab_size must be an integer >= 300"):
        train_tokenizer(["some text"], vocab_size=100)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"hidden_size": 0}, "hidden_size: Input should be greater than 0"),
        ({"num_heads": 3}, "must split into num_heads 3"),
        ({"num_kv_heads": 3}, "multiple of num_kv_heads 3"),
        ({"block_size": 512}, "block_size 512 exceeds max_seq_len"),
        ({"learning_rate": 0}, "learning_rate: Input should be greater than 0"),
        ({"steps": 2.5}, "steps: Input should be a valid integer"),
        ({"tie_embeddings": "yes"}, "tie_embeddings: Input should be a valid boolean"),
    ],
)
def test_bad_settings_are_refused_with_the_field_named(change, message):
    with pytest.raises(ZFLoRAError, match=message):
        TinyBaseSettings(**change)


def test_settings_from_dict_rejects_unknown_keys():
    assert TinyBaseSettings.from_dict({"steps": 5}).steps == 5
    with pytest.raises(ZFLoRAError, match=r"unknown key\(s\) \['layers'\]"):
        TinyBaseSettings.from_dict({"layers": 2})


def test_default_settings_describe_a_model_of_a_few_million_parameters_at_most():
    from transformers import LlamaConfig, LlamaForCausalLM

    s = TinyBaseSettings()
    config = LlamaConfig(
        vocab_size=s.vocab_size, hidden_size=s.hidden_size, intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_layers, num_attention_heads=s.num_heads, num_key_value_heads=s.num_kv_heads,
        tie_word_embeddings=s.tie_embeddings,
    )  # fmt: skip
    with torch.device("meta"):
        parameters = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    assert 5e5 < parameters < 5e6


def test_pretraining_writes_a_standard_hf_directory(pretrained):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    out, metrics = pretrained
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "generation_config.json",
        "tinybase.json",
    } <= {p.name for p in out.iterdir()}
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.vocab_size == len(tokenizer) == metrics["vocab_size"]
    assert (model.config.hidden_size, model.config.num_key_value_heads) == (32, 2)
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert metrics["parameters"] == sum(p.numel() for p in model.parameters())
    assert metrics["steps"] == 6 and metrics["seconds"] > 0
    assert metrics["final_loss"] < metrics["initial_loss"]  # it learns something even in 6 steps
    recorded = json.loads((out / "tinybase.json").read_text())
    assert recorded["settings"]["steps"] == 6 and recorded["metrics"]["final_loss"] == metrics["final_loss"]
    batch = tokenizer(["The mug is"], return_tensors="pt")
    generated = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] <= batch.input_ids.shape[1] + 4


def test_pretraining_is_deterministic_in_the_seed(pretrained, tmp_path):
    from safetensors.torch import load_file

    out, metrics = pretrained
    again = pretrain_tiny_base(tmp_path / "again", TinyBaseSettings(**SMALL), progress=False)
    assert again["final_loss"] == metrics["final_loss"]
    first, second = load_file(out / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_resolve_base_model_loads_a_local_directory(pretrained):
    out, _ = pretrained
    model, tokenizer = resolve_base_model(str(out), dtype="float32")
    assert model.config.model_type == "llama" and tokenizer.eos_token == "</s>"


def test_resolve_base_model_offline_names_the_id_and_the_way_out(
    monkeypatch, hub_clients_online, network_calls
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ZFLoRAError) as caught:
        resolve_base_model("zflora-test/no-such-model-anywhere")
    assert network_calls == []  # offline means no request and no retry, not a quick failure of one
    message = str(caught.value)
    assert "zflora-test/no-such-model-anywhere" in message
    assert "download" in message and ("HF_HOME" in message or "local" in message)
