"""The harness's settings: what params.yaml sections are built from. Imports no torch.

    from zflora.harness.settings import AdapterSettings, TrainSettings
    TrainSettings(batch_size=0)   # ZFLoRAError: TrainSettings.batch_size: Input should be greater than 0 (got 0)

One typed class per concern, a description per field, and the table of compared methods.
Checking a params file imports this module, pydantic and the standard library only (as
litgpt's args.py does), so validating params never loads torch, and a pipeline stage
depends on the code it runs, not on the whole library (dvc.yaml lists exact files).
The code that uses the settings lives beside it: `zflora.harness.methods` (building
each method), `zflora.harness.train`, `zflora.harness.evaluate`, `zflora.harness.tinybase`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from zflora.errors import ZFLoRAError
from zflora.settings import Settings

# ------------------------------------------------------------------ the compared methods

METHODS = ("base", "lora", "zflora", "zflora-mha", "fft", "lora-eqparams", "zflora-eqparams")
TRAINED_METHODS = METHODS[1:]
# zflora-mha adapts the attention blocks only (the paper's zFLoRA-MHA variant)
ZFLORA_BLOCKS = {"zflora": ("attn", "mlp"), "zflora-mha": ("attn",), "zflora-eqparams": ("attn", "mlp")}
LORA_METHODS = ("lora", "lora-eqparams")
# method at an equal parameter budget -> the method whose budget at adapter.r it matches
EQUAL_BUDGET = {"lora-eqparams": "zflora", "zflora-eqparams": "lora"}
# default learning rates per method (adapters tolerate far larger steps than full fine-tuning)
DEFAULT_LEARNING_RATES = {
    "lora": 5e-3,
    "zflora": 1e-2,
    "zflora-mha": 1e-2,
    "fft": 1e-3,
    "lora-eqparams": 5e-3,
    "zflora-eqparams": 1e-2,
}


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ZFLoRAError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    return method


def check_trainable(method: str) -> str:
    if method not in TRAINED_METHODS:
        raise ZFLoRAError(f"cannot train method {method!r}; trainable methods are {list(TRAINED_METHODS)}")
    return method


# ------------------------------------------------------------------------ settings


class AdapterSettings(Settings):
    """Adapter shape shared by LoRA and zFLoRA: equal rank for a fair comparison."""

    r: int = Field(16, gt=0, description="rank of LoRA and zFLoRA (zFLoRA: extra residual channels)")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA alpha (default 2r)")
    init_scale: float = Field(0.02, gt=0, lt=10, description="std of zFLoRA readers' random init")


class TrainSettings(Settings):
    """How to fine-tune: the same for every method, except the learning rate (per method)."""

    epochs: float = Field(1.0, gt=0, description="passes over the training examples")
    max_steps: int = Field(-1, description="> 0 overrides epochs")
    batch_size: int = Field(16, gt=0, description="examples per device and step")
    grad_accum: int = Field(1, gt=0, description="gradient accumulation steps")
    max_seq_len: int = Field(256, gt=0, description="longer examples lose the start of their prompt")
    learning_rates: dict[str, float] = Field(
        default_factory=dict,
        description="per-method overrides of the default learning rates "
        + ", ".join(f"{m} {lr:g}" for m, lr in DEFAULT_LEARNING_RATES.items()),
    )
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="linear warm-up, as a fraction of the steps")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    seed: int = Field(0, description="seed of the adapter init, data order and dropout")
    save_steps: int = Field(50, gt=0, description="checkpoint period (steps): the resume point after a kill")
    logging_steps: int = Field(10, gt=0, description="loss logging period (steps)")
    gradient_checkpointing: bool = Field(False, description="trade compute for activation memory")

    @field_validator("learning_rates")
    @classmethod
    def _known_rates(cls, rates: dict[str, float]) -> dict[str, float]:
        for method, rate in rates.items():
            if method not in TRAINED_METHODS:
                raise ValueError(
                    f"learning rate for unknown or untrainable method {method!r}; "
                    f"trainable methods are {list(TRAINED_METHODS)}"
                )
            if not 0 < rate < 1:
                raise ValueError(f"learning rate of {method} must be in (0, 1), got {rate}")
        return rates

    def learning_rate(self, method: str) -> float:
        """The override for `method`, else its default."""
        check_trainable(method)
        return self.learning_rates.get(method, DEFAULT_LEARNING_RATES[method])


class EvaluateSettings(Settings):
    """How to evaluate: generation batch size, answer budget, and an optional subset."""

    batch_size: int = Field(32, gt=0, description="prompts per generation batch")
    max_new_tokens: int | None = Field(None, gt=0, description="answer budget (default: the task's own)")
    limit: int | None = Field(None, gt=0, description="evaluate only the first n test examples")


class TinyBaseSettings(Settings):
    """Shape and pretraining budget of the embedded tiny base model.

    Defaults: 0.9M parameters (hidden 128, 4 layers, 4 heads / 2 kv heads), 600 steps of
    16 x 128 tokens, about 2.5 minutes on 2 CPU cores.
    """

    vocab_size: int = Field(
        2048,
        ge=300,
        description="BPE vocabulary size cap (>= 300: 256 bytes + merges); the corpus stops near 1240",
    )
    hidden_size: int = Field(128, gt=0, description="model width d")
    num_layers: int = Field(4, gt=0, description="decoder blocks")
    num_heads: int = Field(4, gt=0, description="attention heads (divide hidden_size)")
    num_kv_heads: int = Field(
        2, gt=0, description="key/value heads (divide num_heads): grouped-query attention"
    )
    intermediate_size: int = Field(352, gt=0, description="MLP width")
    max_seq_len: int = Field(256, gt=0, description="longest sequence the model accepts (positions)")
    block_size: int = Field(128, gt=0, description="pretraining sequence length (<= max_seq_len)")
    steps: int = Field(600, gt=0, description="optimizer steps")
    batch_size: int = Field(16, gt=0, description="sequences per step")
    learning_rate: float = Field(3e-3, gt=0, lt=1, description="peak AdamW learning rate (cosine decay)")
    warmup_steps: int = Field(20, ge=0, description="linear warm-up steps")
    weight_decay: float = Field(0.01, ge=0, lt=1, description="AdamW weight decay")
    seed: int = Field(0, ge=0, description="seed of the corpus, initialisation and batch order")
    corpus_docs: int = Field(6000, gt=0, description="documents in the generated corpus")
    tie_embeddings: bool = Field(True, strict=True, description="share the input embedding and the LM head")

    @model_validator(mode="after")
    def _shape_fits(self) -> TinyBaseSettings:
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ValueError(
                f"hidden_size {self.hidden_size} must split into num_heads {self.num_heads} "
                "heads of even size (rotary embeddings); e.g. hidden_size 128 with 4 heads"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads {self.num_heads} must be a multiple of num_kv_heads {self.num_kv_heads}"
            )
        if self.block_size > self.max_seq_len:
            raise ValueError(f"block_size {self.block_size} exceeds max_seq_len {self.max_seq_len}; lower it")
        return self


def headline_score(metrics: dict, metric: str) -> float:
    """The number a task is compared on, in percent: accuracy, or ROUGE-L for summarisation."""
    return 100.0 * metrics["accuracy" if metric == "accuracy" else "rougeL"]
