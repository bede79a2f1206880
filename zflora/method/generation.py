"""Prompt rendering and batched greedy generation (left padding, KV cache) for any causal LM.

    texts = generate_text(model, tokenizer, ["two plus three?"], max_new_tokens=32)

The method layer's own generation: `MultiTaskModel` generates with it, and the harness
(`zflora.harness.generation`: evaluation, `zflora generate`, benchmarks) re-exports it.

Chat models: when the tokenizer has a chat template, each prompt is sent as one user
turn through it (`render_prompt`) and the answer starts after the assistant header;
training uses the same rendering (`render_answer`), so both see the same format. A
tokenizer without a template keeps the plain prompt.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from zflora.errors import ZFLoRAError


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _user_turn(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def render_prompt(tokenizer: Any, prompt: str) -> str:
    """`prompt` as one user turn of the chat template, ending where the assistant's answer starts;
    unchanged when the tokenizer has no template."""
    if not has_chat_template(tokenizer):
        return prompt
    try:
        return tokenizer.apply_chat_template(_user_turn(prompt), tokenize=False, add_generation_prompt=True)
    except Exception as e:  # jinja errors: a template that demands other roles, raise_exception(...)
        raise ZFLoRAError(
            f"the tokenizer's chat template cannot format a single user turn ({str(e).splitlines()[0][:120]}); "
            "fix the template or use --raw"
        ) from None


def render_answer(tokenizer: Any, prompt: str, target: str) -> str:
    """What follows `render_prompt(tokenizer, prompt)` when the assistant answers `target`:
    the answer and the template's end of turn. Plain targets start with a space (they follow
    'Answer:'); in a chat turn the answer starts the message, so it is stripped."""
    answer = target.strip()
    rendered = render_prompt(tokenizer, prompt)
    conversation = [*_user_turn(prompt), {"role": "assistant", "content": answer}]
    full = tokenizer.apply_chat_template(conversation, tokenize=False)
    if full.startswith(rendered):
        return full[len(rendered) :]
    return answer  # a template that rewrites earlier turns: the answer alone (the caller adds EOS)


def encode_prompts(tokenizer: Any, prompts: list[str], chat: bool = True) -> dict[str, torch.Tensor]:
    """Left-padded input ids for `prompts`, through the chat template when `chat` and the tokenizer has one.

    A rendered template carries its own special tokens, so none are added on top of it.
    """
    if chat and has_chat_template(tokenizer):
        texts = [render_prompt(tokenizer, p) for p in prompts]
        return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return tokenizer(prompts, return_tensors="pt", padding=True)


def stop_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    """The tokenizer's EOS plus the model's own end-of-sequence ids (a chat model's end-of-turn
    token, e.g. Llama-3's <|eot_id|>, is often only in its generation config)."""
    ids = [tokenizer.eos_token_id]
    config = getattr(model, "generation_config", None)
    extra = getattr(config, "eos_token_id", None)
    ids += extra if isinstance(extra, (list, tuple)) else [extra]
    return list(dict.fromkeys(i for i in ids if isinstance(i, int)))


def context_length(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None)


@torch.no_grad()
def generate_text(
    model: nn.Module,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    progress: bool = False,
    labels: list[str] | None = None,
    chat: bool = True,
) -> list[str]:
    """Greedy completions (prompt removed, special tokens skipped) for each prompt.

    Prompts are batched with left padding so every row's last real token sits at the
    end; generation uses the KV cache. With `chat` (the default), a tokenizer with a chat
    template formats each prompt as a user turn; `chat=False` sends the raw text. A
    prompt that cannot fit the model's context together with `max_new_tokens` is
    refused with a ZFLoRAError naming it.
    """
    if max_new_tokens <= 0:
        raise ZFLoRAError(f"max_new_tokens must be positive, got {max_new_tokens}")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    limit = context_length(model)
    device = next(model.parameters()).device
    completions: list[str] = []
    batches = range(0, len(prompts), batch_size)
    for start in tqdm(batches, desc="generate", unit="batch", disable=not progress):
        batch = prompts[start : start + batch_size]
        encoded = encode_prompts(tokenizer, batch, chat=chat)
        if limit is not None:
            lengths = encoded["attention_mask"].sum(dim=1).tolist()
            for offset, length in enumerate(lengths):
                if length + max_new_tokens > limit:
                    name = labels[start + offset] if labels else f"prompt {start + offset}"
                    raise ZFLoRAError(
                        f"{name} is {length} tokens; with max_new_tokens={max_new_tokens} it exceeds the model's "
                        f"context of {limit} tokens; shorten the prompt or lower max_new_tokens"
                    )
        encoded = {k: v.to(device) for k, v in encoded.items()}
        output = model.generate(
            **encoded,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=stop_ids(model, tokenizer),
            use_cache=True,
        )
        new_tokens = output[:, encoded["input_ids"].shape[1] :]
        completions += [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    return completions
