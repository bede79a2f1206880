"""Profiling settings and named model shapes (presets) that need no download.

    from zflora.harness.profiling import ProfileSettings, PRESETS
    settings = ProfileSettings(preset="llama-3.2-1b", layers=4, r=32)

A preset holds the real dimensions of a published model; the profiler builds it with
random weights (latency does not depend on the values). `layers` keeps only the first
n decoder layers for quick CPU runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator

from zflora.settings import Settings

CLOCKS = ("wall", "cpu")
VARIANTS = ("base", "lora", "lora-merged", "zflora", "zflora-fused")
DTYPES = ("float32", "bfloat16", "float16")


def _as_tuple(values: Any) -> Any:
    return (values,) if isinstance(values, int) and not isinstance(values, bool) else values


def _unique(values: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(dict.fromkeys(values))  # keep order, drop duplicates


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
    "smollm2-135m": ModelShape(
        576,
        30,
        9,
        3,
        1536,
        49152,
        tie_word_embeddings=True,
        head_dim=64,
        rope_theta=100000.0,
        max_position_embeddings=8192,
    ),
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


PositiveInts = Annotated[
    tuple[Annotated[int, Field(gt=0, strict=True)], ...], BeforeValidator(_as_tuple), AfterValidator(_unique)
]


class ProfileSettings(Settings):
    """What to profile and how. Every field is validated; bad values raise ZFLoRAError."""

    preset: str | None = Field(
        "llama-3.2-1b", description=f"named model shape with random weights: {', '.join(PRESETS)}"
    )
    model: str | None = Field(
        None, description="a local HF model directory (Llama/Mistral/Qwen2); overrides preset"
    )
    layers: int | None = Field(
        None, gt=0, description="keep only the first n decoder layers of a preset (quick CPU runs)"
    )
    r: int = Field(32, gt=0, description="adapter rank of LoRA and zFLoRA")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights and activations")
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$", description="cpu, cuda or cuda:N")
    batch_sizes: PositiveInts = Field((1, 8), min_length=1, description="batch sizes to time")
    prompt_lengths: PositiveInts = Field((32, 128), min_length=1, description="prompt lengths for prefill")
    decode_tokens: int = Field(16, gt=0, description="tokens decoded (KV cache) per decode sample")
    decode_context: int | None = Field(
        None, gt=0, description="prompt length before decoding (default: the shortest prompt length)"
    )
    repeats: int = Field(10, gt=0, description="timed samples per variant and cell (round-robin)")
    warmup: int = Field(2, ge=0, description="untimed runs per variant before each cell")
    switch_repeats: int = Field(20, gt=0, description="timed samples per adapter-switch method")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: torch's choice)")
    clock: Literal["wall", "cpu"] = Field(
        "wall",
        description="wall: elapsed time; cpu: process CPU time (CPU only; robust on a shared machine, use threads=1)",
    )
    pad_multiples: PositiveInts = Field(
        (), description="extra fused variants with the width padded to these multiples"
    )
    variants: tuple[str, ...] = Field(VARIANTS, description=f"variants to time: {', '.join(VARIANTS)}")
    memory: bool = Field(True, description="measure weight and peak activation memory")
    switch: bool = Field(True, description="time adapter switching")
    seed: int = Field(0, strict=True, description="seed of weights, adapters and inputs")

    @field_validator("variants", mode="before")
    @classmethod
    def _known_variants(cls, variants: Any) -> tuple[str, ...]:
        variants = (variants,) if isinstance(variants, str) else tuple(variants)
        if "base" not in variants or any(v not in VARIANTS for v in variants):
            raise ValueError(
                f"must include 'base' and only names from {list(VARIANTS)}, got {list(variants)}"
            )
        return tuple(v for v in VARIANTS if v in variants)  # canonical order

    @model_validator(mode="after")
    def _consistent(self) -> ProfileSettings:
        if self.model is not None:
            if not (Path(self.model) / "config.json").is_file():
                raise ValueError(
                    f"model {self.model!r} is not a model directory (no config.json); "
                    "pass a directory written by save_pretrained, or use a preset"
                )
            if self.layers is not None:
                raise ValueError("layers applies to presets only; drop it when profiling a model directory")
        elif self.preset not in PRESETS:
            raise ValueError(
                f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)} or pass a model directory"
            )
        if self.clock == "cpu" and self.device != "cpu":
            raise ValueError("clock='cpu' measures CPU time and needs device='cpu'; use clock='wall' on CUDA")
        if self.pad_multiples and "zflora-fused" not in self.variants:
            raise ValueError("pad_multiples needs the 'zflora-fused' variant")
        return self

    @property
    def source(self) -> str:
        """What is profiled: the model directory or the preset name."""
        return self.model if self.model is not None else str(self.preset)

    @property
    def context_length(self) -> int:
        """Prompt length before the decode steps."""
        return self.decode_context or min(self.prompt_lengths)
