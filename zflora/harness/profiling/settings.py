"""Profiling settings and named model shapes (presets) that need no download.

    from zflora.harness.profiling import ProfileSettings, PRESETS
    settings = ProfileSettings(preset="llama-3.2-1b", layers=4, r=32)

A preset holds the real dimensions of a published model; the profiler builds it with
random weights (latency does not depend on the values). `layers` keeps only the first
n decoder layers for quick CPU runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zflora.errors import ZFLoRAError, check_fields

CLOCKS = ("wall", "cpu")
VARIANTS = ("base", "lora", "lora-merged", "zflora", "zflora-fused")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a Llama-family decoder (what latency depends on)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    head_dim: int | None = None
    rope_theta: float = 500000.0
    max_position_embeddings: int = 131072

    def config(self, layers: int | None = None) -> Any:
        """A transformers LlamaConfig of this shape, optionally with only `layers` decoder layers."""
        from transformers import LlamaConfig

        return LlamaConfig(
            hidden_size=self.hidden_size,
            num_hidden_layers=layers or self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            intermediate_size=self.intermediate_size,
            vocab_size=self.vocab_size,
            tie_word_embeddings=self.tie_word_embeddings,
            head_dim=self.head_dim or self.hidden_size // self.num_attention_heads,
            max_position_embeddings=self.max_position_embeddings,
            rope_parameters={"rope_theta": self.rope_theta, "rope_type": "default"},
            rms_norm_eps=1e-5,
            hidden_act="silu",
        )


# Real dimensions of the published models (config.json on the HF Hub); weights are random.
PRESETS: dict[str, ModelShape] = {
    "llama-3.2-1b": ModelShape(2048, 16, 32, 8, 8192, 128256, tie_word_embeddings=True, head_dim=64),
    "llama-3.2-3b": ModelShape(3072, 28, 24, 8, 8192, 128256, tie_word_embeddings=True, head_dim=128),
    "llama-3.1-8b": ModelShape(4096, 32, 32, 8, 14336, 128256, tie_word_embeddings=False, head_dim=128),
    # a small model of the embedded pipeline's kind: Python overhead dominates its latency
    "tiny": ModelShape(
        256,
        4,
        8,
        4,
        688,
        8192,
        tie_word_embeddings=True,
        head_dim=32,
        rope_theta=10000.0,
        max_position_embeddings=2048,
    ),
}


def _positive_ints(name: str, values: Any, allow_empty: bool = False) -> tuple[int, ...]:
    if isinstance(values, int) and not isinstance(values, bool):
        values = (values,)
    try:
        values = tuple(values)
    except TypeError:
        raise ZFLoRAError(
            f"ProfileSettings.{name} must be a list of positive integers, got {values!r}"
        ) from None
    if not values and not allow_empty:
        raise ZFLoRAError(
            f"ProfileSettings.{name} is empty; give at least one positive integer, e.g. {name}=(1, 8)"
        )
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v <= 0]
    if bad:
        raise ZFLoRAError(f"ProfileSettings.{name} must hold positive integers, got {bad}")
    return tuple(dict.fromkeys(values))  # keep order, drop duplicates


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ZFLoRAError(f"ProfileSettings.{name} must be an integer >= {minimum}, got {value!r}")
    return value


@dataclass
class ProfileSettings:
    """What to profile and how. Every field is validated; bad values raise ZFLoRAError."""

    preset: str | None = field(
        default="llama-3.2-1b",
        metadata={"help": f"named model shape with random weights: {', '.join(PRESETS)}"},
    )
    model: str | None = field(
        default=None, metadata={"help": "a local HF model directory (Llama/Mistral/Qwen2); overrides preset"}
    )
    layers: int | None = field(
        default=None, metadata={"help": "keep only the first n decoder layers of a preset (quick CPU runs)"}
    )
    r: int = field(default=32, metadata={"help": "adapter rank of LoRA and zFLoRA"})
    dtype: str = field(default="float32", metadata={"help": f"weights and activations: {', '.join(DTYPES)}"})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda or cuda:N"})
    batch_sizes: tuple[int, ...] = field(default=(1, 8), metadata={"help": "batch sizes to time"})
    prompt_lengths: tuple[int, ...] = field(
        default=(32, 128), metadata={"help": "prompt lengths for prefill"}
    )
    decode_tokens: int = field(default=16, metadata={"help": "tokens decoded (KV cache) per decode sample"})
    decode_context: int | None = field(
        default=None, metadata={"help": "prompt length before decoding (default: the shortest prompt length)"}
    )
    repeats: int = field(default=10, metadata={"help": "timed samples per variant and cell (round-robin)"})
    warmup: int = field(default=2, metadata={"help": "untimed runs per variant before each cell"})
    switch_repeats: int = field(default=20, metadata={"help": "timed samples per adapter-switch method"})
    threads: int | None = field(
        default=None, metadata={"help": "torch CPU threads (default: torch's choice)"}
    )
    clock: str = field(
        default="wall",
        metadata={
            "help": "wall: elapsed time; cpu: process CPU time (CPU only; robust on a shared machine, use threads=1)"
        },
    )
    pad_multiples: tuple[int, ...] = field(
        default=(), metadata={"help": "extra fused variants with the width padded to these multiples"}
    )
    variants: tuple[str, ...] = field(
        default=VARIANTS, metadata={"help": f"variants to time: {', '.join(VARIANTS)}"}
    )
    memory: bool = field(default=True, metadata={"help": "measure weight and peak activation memory"})
    switch: bool = field(default=True, metadata={"help": "time adapter switching"})
    seed: int = field(default=0, metadata={"help": "seed of weights, adapters and inputs"})

    def __post_init__(self) -> None:
        if self.model is not None:
            path = Path(self.model)
            if not (path / "config.json").is_file():
                raise ZFLoRAError(
                    f"ProfileSettings.model {self.model!r} is not a model directory (no config.json); "
                    "pass a directory written by save_pretrained, or use a preset"
                )
            if self.layers is not None:
                raise ZFLoRAError(
                    "ProfileSettings.layers applies to presets only; drop it when profiling a model directory"
                )
            self.model = str(path)
        elif self.preset not in PRESETS:
            raise ZFLoRAError(
                f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)} or pass a model directory"
            )
        if self.layers is not None:
            _positive_int("layers", self.layers)
        _positive_int("r", self.r)
        if self.dtype not in DTYPES:
            raise ZFLoRAError(f"ProfileSettings.dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.device, str) or not (
            self.device == "cpu" or self.device.split(":")[0] == "cuda"
        ):
            raise ZFLoRAError(
                f"ProfileSettings.device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}"
            )
        self.batch_sizes = _positive_ints("batch_sizes", self.batch_sizes)
        self.prompt_lengths = _positive_ints("prompt_lengths", self.prompt_lengths)
        self.pad_multiples = _positive_ints("pad_multiples", self.pad_multiples, allow_empty=True)
        _positive_int("decode_tokens", self.decode_tokens)
        if self.decode_context is not None:
            _positive_int("decode_context", self.decode_context)
        _positive_int("repeats", self.repeats)
        _positive_int("warmup", self.warmup, minimum=0)
        _positive_int("switch_repeats", self.switch_repeats)
        if self.threads is not None:
            _positive_int("threads", self.threads)
        if self.clock not in CLOCKS:
            raise ZFLoRAError(f"ProfileSettings.clock must be one of {list(CLOCKS)}, got {self.clock!r}")
        if self.clock == "cpu" and self.device != "cpu":
            raise ZFLoRAError(
                "ProfileSettings.clock='cpu' measures CPU time and needs device='cpu'; use clock='wall' on CUDA"
            )
        if isinstance(self.variants, str):
            self.variants = (self.variants,)
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or "base" not in self.variants:
            raise ZFLoRAError(
                f"ProfileSettings.variants must include 'base' and only names from {list(VARIANTS)}, "
                f"got {list(self.variants)}"
            )
        self.variants = tuple(v for v in VARIANTS if v in self.variants)
        if self.pad_multiples and "zflora-fused" not in self.variants:
            raise ZFLoRAError("ProfileSettings.pad_multiples needs the 'zflora-fused' variant")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ZFLoRAError(f"ProfileSettings.seed must be an integer, got {self.seed!r}")

    @property
    def source(self) -> str:
        """What is profiled: the model directory or the preset name."""
        return self.model if self.model is not None else str(self.preset)

    @property
    def context_length(self) -> int:
        """Prompt length before the decode steps."""
        return self.decode_context or min(self.prompt_lengths)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "profile settings") -> ProfileSettings:
        """Settings from a params.yaml section or JSON, rejecting unknown keys with a clear message."""
        check_fields(cls, data, source, noun="key")
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        try:
            return cls(**data)
        except ZFLoRAError as e:
            raise ZFLoRAError(f"{source}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        return data
