"""The embedded tiny base model: a ~1M-parameter Llama pretrained on CPU in about two minutes.

    from zflora.harness.tinybase import TinyBaseSettings, pretrain_tiny_base
    metrics = pretrain_tiny_base("models/tiny-base", TinyBaseSettings())   # ~2.5 min on 2 cores
    # -> a normal HF directory: AutoModelForCausalLM / AutoTokenizer.from_pretrained load it

The corpus (`general_corpus`) is generated from a seed; a byte-level BPE tokenizer is
trained on it (`train_tokenizer`); a `LlamaForCausalLM` is pretrained on packed sequences
with a plain torch loop. Everything is seeded, so the same settings give the same model.
`resolve_base_model` loads any other base (hub id or local directory) instead.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from zflora.errors import ZFLoRAError
from zflora.harness.data.corpus import general_corpus
from zflora.harness.settings import TinyBaseSettings
from zflora.method.atomic import atomic_dir

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2
__all__ = [
    "TinyBaseSettings",
    "general_corpus",
    "pretrain_tiny_base",
    "resolve_base_model",
    "train_tokenizer",
]


def train_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `corpus`, wrapped as a transformers fast tokenizer.

    <pad>=0, <s>=1 (added at the start of every encoded text, as Llama does), </s>=2; no
    <unk> is needed since every byte has a token. `save_pretrained(dir)` writes files that
    `AutoTokenizer.from_pretrained(dir)` loads.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 300:
        raise ZFLoRAError(f"vocab_size must be an integer >= 300 (256 bytes + merges), got {vocab_size!r}")
    if not corpus:
        raise ZFLoRAError("train_tokenizer needs a non-empty corpus")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    bos = SPECIAL_TOKENS[1]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>", padding_side="left"
    )


def _llama_config(settings: TinyBaseSettings, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_kv_heads,
        max_position_embeddings=settings.max_seq_len,
        tie_word_embeddings=settings.tie_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _pack(corpus: list[str], tokenizer, block_size: int) -> torch.Tensor:
    """Every document as <s> ... </s>, concatenated and cut into rows of `block_size` tokens."""
    ids: list[int] = []
    for encoded in tokenizer(corpus, add_special_tokens=True)["input_ids"]:
        ids.extend(encoded)
        ids.append(tokenizer.eos_token_id)
    rows = len(ids) // block_size
    if rows == 0:
        raise ZFLoRAError(
            f"the corpus has only {len(ids)} tokens, fewer than one block of {block_size}; raise corpus_docs"
        )
    return torch.tensor(ids[: rows * block_size], dtype=torch.long).view(rows, block_size)


def _learning_rate(step: int, settings: TinyBaseSettings) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def pretrain_tiny_base(
    out_dir: str | Path, settings: TinyBaseSettings | None = None, progress: bool = True
) -> dict[str, Any]:
    """Generate the corpus, train the tokenizer, pretrain the model and save it to `out_dir` (atomically).

    Returns metrics: final_loss (mean of the last 10 steps), initial_loss, steps, seconds
    (wall), cpu_seconds (summed over threads), parameters, vocab_size, corpus_tokens, tokens_seen.
    """
    from tqdm.auto import tqdm
    from transformers import GenerationConfig, LlamaForCausalLM

    settings = settings or TinyBaseSettings()
    if not isinstance(settings, TinyBaseSettings):
        raise ZFLoRAError(f"settings must be a TinyBaseSettings, got {type(settings).__name__}")
    started, started_cpu = time.perf_counter(), time.process_time()
    corpus = general_corpus(settings.seed, settings.corpus_docs)
    tokenizer = train_tokenizer(corpus, settings.vocab_size)
    tokenizer.model_max_length = settings.max_seq_len
    blocks = _pack(corpus, tokenizer, settings.block_size)

    torch.manual_seed(settings.seed)
    model = LlamaForCausalLM(_llama_config(settings, tokenizer))
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=64,
    )
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.learning_rate,
        betas=(0.9, 0.95),
    )
    generator = torch.Generator().manual_seed(settings.seed)
    order = torch.randperm(len(blocks), generator=generator)
    cursor, losses = 0, []
    model.train()
    bar = tqdm(range(settings.steps), desc="pretrain tiny base", disable=not progress, unit="step")
    for step in bar:
        if cursor + settings.batch_size > len(order):  # next epoch, new order
            order, cursor = torch.randperm(len(blocks), generator=generator), 0
        batch = blocks[order[cursor : cursor + settings.batch_size]]
        cursor += settings.batch_size
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, settings)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()

    metrics = {
        "final_loss": sum(losses[-10:]) / len(losses[-10:]),
        "initial_loss": losses[0],
        "steps": settings.steps,
        "seconds": round(time.perf_counter() - started, 2),
        "cpu_seconds": round(time.process_time() - started_cpu, 2),  # all threads; vs seconds: contention
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "corpus_tokens": int(blocks.numel()),
        "tokens_seen": settings.steps * settings.batch_size * settings.block_size,
    }
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {"settings": settings.to_dict(), "metrics": metrics}
        (tmp / "tinybase.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return metrics


def resolve_base_model(
    name_or_path: str | Path, trust_remote_code: bool = False, dtype: str | torch.dtype | None = None
):
    """(model, tokenizer) of a hub id or a local model directory.

    When the Hub is unreachable (or HF_HUB_OFFLINE is set) a hub id loads from the local
    cache at once instead of retrying; missing there, a ZFLoRAError names the id and how
    to provide it (a local directory, or `hf download <id>` on a connected machine with
    HF_HOME pointing at that cache).
    """
    from zflora.harness.data.hub import forced_offline, should_run_offline
    from zflora.method.loading import load_causal_lm, looks_like_path

    name = str(name_or_path)
    if not name.strip():
        raise ZFLoRAError("base model name is empty; pass a hub id (org/name) or a local model directory")
    offline = not looks_like_path(name) and should_run_offline()
    with forced_offline(offline):
        return load_causal_lm(name, dtype=dtype, trust_remote_code=trust_remote_code)
