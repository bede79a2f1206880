"""Chat models: tasks go through the tokenizer's chat template in training, evaluation and
`zflora generate` alike (loss on the answer only); tokenizers without one keep the plain format."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest import CHAT_TEMPLATE, bpe_tokenizer, tiny_model

from zflora.cli import main
from zflora.errors import ZFLoRAError
from zflora.harness.evaluate import evaluate_examples
from zflora.harness.generation import encode_prompts, render_answer, render_prompt
from zflora.harness.train import IGNORE_INDEX, SupervisedDataset

PROMPT = "Question: two plus three?\nAnswer:"
TARGET = " two plus three is five."


def example(prompt=PROMPT, target=TARGET, id=0):
    return SimpleNamespace(id=id, prompt=prompt, target=target, answer="5")


def answer_part(row):
    ids, labels = row
    return [i for i, label in zip(ids, labels) if label != IGNORE_INDEX]


def test_training_rows_use_the_template_with_loss_on_the_answer_only():
    tokenizer = bpe_tokenizer()
    rendered = render_prompt(tokenizer, PROMPT)
    assert rendered == f"<s>user: {PROMPT}</s>\n<s>assistant: "
    assert render_answer(tokenizer, PROMPT, TARGET) == "two plus three is five.</s>\n"

    row = SupervisedDataset([example()], tokenizer, max_seq_len=256).rows[0]
    ids, labels = row
    prompt_len = labels.index(next(label for label in labels if label != IGNORE_INDEX))
    # the prompt part is exactly what evaluation and `zflora generate` feed the model
    assert ids[:prompt_len] == encode_prompts(tokenizer, [PROMPT])["input_ids"][0].tolist()
    assert all(label == IGNORE_INDEX for label in labels[:prompt_len])
    # the answer (no leading space in a chat turn), ended by the template's end of turn = EOS, nothing after
    assert tokenizer.decode(answer_part(row)) == "two plus three is five.</s>"
    assert ids[-1] == tokenizer.eos_token_id and labels[prompt_len:] == ids[prompt_len:]


def test_plain_format_without_a_template_is_unchanged():
    tokenizer = bpe_tokenizer(chat_template=None)
    assert render_prompt(tokenizer, PROMPT) == PROMPT
    ids, labels = SupervisedDataset([example()], tokenizer, max_seq_len=256).rows[0]
    prompt = tokenizer(PROMPT)["input_ids"]
    target = tokenizer(TARGET, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert ids == prompt + target
    assert labels == [IGNORE_INDEX] * len(prompt) + target
    assert encode_prompts(tokenizer, [PROMPT])["input_ids"][0].tolist() == prompt


def test_turn_end_that_is_not_eos_gets_eos_appended():
    tokenizer = bpe_tokenizer(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    row = SupervisedDataset([example()], tokenizer, max_seq_len=256).rows[0]
    assert tokenizer.decode(answer_part(row)) == "two plus three is five.\n\n</s>"


def test_a_template_that_cannot_format_a_user_turn_says_so():
    tokenizer = bpe_tokenizer("{{ raise_exception('system message required') }}")
    with pytest.raises(ZFLoRAError, match="chat template cannot format a single user turn.*--raw"):
        render_prompt(tokenizer, PROMPT)


@pytest.fixture
def chat_model_dir(tmp_path):
    tokenizer = bpe_tokenizer()
    tiny_model("llama", vocab=len(tokenizer)).save_pretrained(tmp_path / "chat")
    tokenizer.save_pretrained(tmp_path / "chat")
    return tmp_path / "chat"


@pytest.fixture
def encoded(monkeypatch):
    """Records what generate_text feeds the model: (decoded first row without padding, chat flag)."""
    from zflora.method import generation

    calls = []
    original = generation.encode_prompts

    def spy(tokenizer, prompts, chat=True):
        batch = original(tokenizer, prompts, chat=chat)
        calls.append((tokenizer.decode(batch["input_ids"][0], skip_special_tokens=False), chat))
        return batch

    monkeypatch.setattr(generation, "encode_prompts", spy)
    return calls


def test_generate_applies_the_template_unless_raw(chat_model_dir, encoded, capsys):
    argv = ["generate", "--model", str(chat_model_dir), "--prompt", "hello world", "--max-new-tokens", "2"]
    assert main(argv) == 0
    assert main([*argv, "--raw"]) == 0
    assert encoded == [("<s>user: hello world</s>\n<s>assistant: ", True), ("hello world", False)]


def test_evaluation_renders_task_prompts_like_training(chat_model_dir, encoded):
    from zflora.method.loading import load_causal_lm

    model, tokenizer = load_causal_lm(chat_model_dir)
    task = SimpleNamespace(
        name="toy",
        metric="accuracy",
        max_new_tokens=2,
        score=lambda completions, examples: {"accuracy": 0.0},
        extract=lambda completion: completion,
    )
    evaluate_examples(model, tokenizer, task, [example()], batch_size=4)
    assert encoded == [(render_prompt(tokenizer, PROMPT), True)]
    assert CHAT_TEMPLATE == tokenizer.chat_template


def test_generation_also_stops_at_the_models_own_end_of_turn_ids():
    from zflora.harness.generation import stop_ids

    tokenizer = bpe_tokenizer()
    model = tiny_model("llama", vocab=len(tokenizer))
    model.generation_config.eos_token_id = [7, tokenizer.eos_token_id]  # e.g. Llama-3's <|eot_id|> and EOS
    assert stop_ids(model, tokenizer) == [tokenizer.eos_token_id, 7]
    model.generation_config.eos_token_id = None
    assert stop_ids(model, tokenizer) == [tokenizer.eos_token_id]
