"""Tiny models and tokenizers built in code: every test runs offline on the CPU."""

from __future__ import annotations

import os

import pytest
import torch

# `make test` runs the tests in two processes (pytest-xdist). Each process builds the session
# fixtures its tests use, so the tests that share the smoke pipeline run stay together, and
# the work-pool tests (their own cluster and serial reference run) are another unit; every
# other test is a unit of its own, handed to whichever process is free. (xdist's
# `--dist loadgroup` marks do not group under pytest 9.2: pytest-dev/pytest-xdist#1386.)
TEST_UNITS = {
    "tests/pipeline/test_pool.py": "pool",
    **{
        f"tests/pipeline/{name}.py": "pipeline"
        for name in ("test_pipeline_e2e", "test_interruptions", "test_warm", "test_dvc_deps")
    },
}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class Units(LoadScopeScheduling):
        """Largest unit first (xdist's default order for scopes), so the two big ones start at once."""

        def _split_scope(self, nodeid: str) -> str:
            return TEST_UNITS.get(nodeid.split("::", 1)[0], nodeid)

    return Units(config, log)


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DISABLE_MLFLOW_INTEGRATION", "TRUE")

VOCAB = 97


def tiny_model(
    family: str = "llama",
    tied: bool = True,
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    vocab: int = VOCAB,
):
    """A randomly initialised causal LM of `family` (grouped-query attention: 4 heads, 2 kv heads)."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    classes = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "mistral": (MistralConfig, MistralForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    }
    config_cls, model_cls = classes[family]
    config = config_cls(
        hidden_size=hidden,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        max_position_embeddings=128,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    # spread the random weights a bit so that adapters and bases differ visibly in logits
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.08)
    return model


FAMILIES = [("llama", True), ("llama", False), ("qwen2", True), ("qwen2", False), ("mistral", False)]
FAMILY_IDS = [f"{f}-{'tied' if t else 'untied'}" for f, t in FAMILIES]


@pytest.fixture(params=FAMILIES, ids=FAMILY_IDS)
def family(request):
    return request.param


def randomize_adapter(zm, std: float = 0.1, seed: int = 1) -> None:
    """Give every matrix of the active adapter non-zero random values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in zm.adapter_state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)


def tiny_tokenizer():
    """A small byte-level BPE tokenizer trained in code, with bos/eos/pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()[:90],
    )
    corpus = ["the cat sat on the mat", "two plus three is five", "hello world", "a b c d e f g"] * 20
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", padding_side="left"
    )


CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


def bpe_tokenizer(chat_template: str | None = CHAT_TEMPLATE):
    """A byte-level BPE with real merges (the whole byte alphabet), bos/eos/pad and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = ["the cat sat on the mat", "two plus three is five", "hello world", "assistant user"] * 30
    tok.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", padding_side="left"
    )
    if chat_template:
        tokenizer.chat_template = chat_template
    return tokenizer


@pytest.fixture
def model_dir(tmp_path):
    """A saved tiny Llama base model (tied) with its tokenizer, as a normal HF directory."""
    tokenizer = tiny_tokenizer()
    model = tiny_model("llama", tied=True, vocab=max(VOCAB, len(tokenizer)))
    path = tmp_path / "base"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.fixture
def network_calls(monkeypatch):
    """Every attempt to reach the network (a name lookup or a connect outside Unix sockets), recorded
    and refused: a test asserts the list stays empty, so a client that tries (or retries) shows up."""
    import socket

    calls: list[tuple] = []

    def refuse(what, *args):
        calls.append((what, *args))
        raise OSError(f"network access in a test: {what}{args}")

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(sock, address):
        if sock.family == socket.AF_UNIX:
            return real_connect(sock, address)
        refuse("connect", address)

    def connect_ex(sock, address):
        if sock.family == socket.AF_UNIX:
            return real_connect_ex(sock, address)
        refuse("connect_ex", address)

    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: refuse("getaddrinfo", *args))
    monkeypatch.setattr(
        socket, "create_connection", lambda address, *a, **k: refuse("create_connection", address)
    )
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    return calls


@pytest.fixture
def hub_clients_online(monkeypatch):
    """The hub clients' offline flags as a process started without HF_HUB_OFFLINE has them (they
    read it once, at import, and this file sets it for every test): only zflora's own offline
    handling can then keep them off the network."""
    import datasets.config
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
