"""Convert a checkpoint's Hugging Face tokenizer into GGUF tokenizer fields (no source GGUF).

Byte-level BPE and SentencePiece tokenizers go through the `gguf` package's vocab helpers;
the pre-tokenizer is named for llama.cpp when zflora recognises it (gpt2, smollm,
llama-bpe, qwen2, gpt-4o) and refused otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zflora.errors import ZFLoRAError, first_line


def _bpe_pre_name(tokenizer_json: dict[str, Any]) -> str | None:
    pre = tokenizer_json.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt2"
    if pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers", [])
        kinds = [p.get("type") for p in parts]
        if (
            kinds == ["Digits", "ByteLevel"]
            and parts[0].get("individual_digits")
            and parts[1].get("use_regex", True)
        ):
            return "smollm"  # SmolLM's tokenizer: single digits, then GPT-2's split
        if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
            from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

            pattern = (parts[0].get("pattern") or {}).get("Regex")
            for gguf_name in ("llama-bpe", "qwen2", "gpt-4o"):
                if GGUF_PRE_TOKENIZER_SPLITS.get(gguf_name) == pattern:
                    return gguf_name
    return None


def write_converted_tokenizer(writer: Any, model_dir: Path, vocab_size: int) -> str:
    """Convert the checkpoint's HF tokenizer with gguf's vocab helpers; returns a description."""
    import gguf

    where = str(model_dir)
    tokenizer_json_path = model_dir / "tokenizer.json"
    tokenizer_json = json.loads(tokenizer_json_path.read_text()) if tokenizer_json_path.is_file() else {}
    helpers = [gguf.BpeVocab, gguf.LlamaHfVocab]  # byte-level BPE; SentencePiece-style BPE in tokenizer.json
    if (model_dir / "tokenizer.model").is_file():
        helpers.insert(0, gguf.SentencePieceVocab)
    vocab = None
    for helper in helpers:
        try:
            vocab = helper(model_dir)
            break
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            continue
        except (ImportError, RuntimeError) as e:  # SentencePieceVocab without the sentencepiece package
            raise ZFLoRAError(
                f"{where}: converting its tokenizer needs {first_line(e)}; install it"
            ) from None
    if vocab is None:
        raise ZFLoRAError(
            f"{where}: its tokenizer is neither a byte-level BPE nor a SentencePiece model, "
            "so it cannot be written to GGUF"
        )
    if vocab.vocab_size > vocab_size:
        raise ZFLoRAError(
            f"{where}: the tokenizer has {vocab.vocab_size} tokens but the model's embedding only {vocab_size}; "
            "GGUF needs every token to have a row"
        )
    special_ids = set()
    if tokenizer_json:
        special_ids = {t["id"] for t in tokenizer_json.get("added_tokens", []) if t.get("special")}
    tokens, scores, types = [], [], []
    for index, (text, score, token_type) in enumerate(vocab.all_tokens()):
        tokens.append(text)
        scores.append(score)
        special = index in special_ids and token_type in (gguf.TokenType.NORMAL, gguf.TokenType.USER_DEFINED)
        types.append(gguf.TokenType.CONTROL if special else token_type)  # byte tokens stay BYTE
    if vocab.name == "hfft":  # gguf's LlamaHfVocab scores every token -1000: rank them by the merges instead
        scores = _merge_scores(tokenizer_json, tokens, types, scores)
    for index in range(len(tokens), vocab_size):  # embedding rows with no token: llama.cpp's padding names
        tokens.append(f"[PAD{index}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    if vocab.tokenizer_model == "gpt2":
        pre = _bpe_pre_name(tokenizer_json)
        if pre is None:
            described = json.dumps(tokenizer_json.get("pre_tokenizer"))[:80]
            raise ZFLoRAError(
                f"{where}: the tokenizer's pre-tokenizer {described} has no llama.cpp name zflora knows "
                "(gpt2, smollm, llama-bpe, qwen2, gpt-4o), so it cannot be written to GGUF"
            )
        writer.add_tokenizer_pre(pre)
    writer.add_tokenizer_model(vocab.tokenizer_model)
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=vocab.tokenizer_model == "gpt2", n_vocab=len(tokens))
    special.add_to_gguf(writer, quiet=True)
    return f"converted ({vocab.name}, {vocab.vocab_size} tokens)"


def _merge_scores(tokenizer_json: dict[str, Any], tokens: list[Any], types: list[Any], scores: list[float]):
    """SentencePiece-style scores for a BPE vocabulary: a merged token scores minus its merge's rank
    (llama.cpp and transformers both merge the best-scored pair first), other normal tokens 0."""
    import gguf

    rank: dict[str, int] = {}
    for index, merge in enumerate(tokenizer_json.get("model", {}).get("merges") or []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(left + right, index)
    out = []
    for token, token_type, score in zip(tokens, types, scores):
        text = token.decode("utf-8", errors="replace") if isinstance(token, bytes) else token
        if token_type == gguf.TokenType.NORMAL:
            score = -1.0 - rank[text] if text in rank else 0.0
        out.append(score)
    return out
