"""ZFLoRAConfig: the settings of one zFLoRA adapter (rank, blocks, initialisation, dtype)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from zflora.settings import Settings

BLOCKS = ("attn", "mlp")
DTYPES = ("auto", "float32", "bfloat16", "float16")


class ZFLoRAConfig(Settings):
    """Settings of one zFLoRA adapter.

    The residual stream is widened from d to d + r channels; each adapted block reads the
    r adapter channels through extra input columns of its projections and writes them
    through extra output rows (docs/method.md).
    """

    r: int = Field(16, description="adapter rank: extra residual channels (> 0), e.g. 16 or 32")
    blocks: tuple[str, ...] = Field(
        BLOCKS,
        description="blocks that read and write the adapter channels: ('attn', 'mlp'), ('attn',) or ('mlp',)",
    )
    init_scale: float = Field(
        0.02,
        gt=0,
        lt=10,
        description="std of the readers' random init; writers start at zero so step 0 equals the base",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="adapter parameter dtype: 'auto' (float32 on a half-precision base, as PEFT does; "
        "otherwise the base's dtype), float32, bfloat16 or float16",
    )
    seed: int | None = Field(None, strict=True, description="seed for the readers' init (None: torch's RNG)")

    @field_validator("r", mode="before")
    @classmethod
    def _positive_rank(cls, r: object) -> int:
        if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
            raise ValueError("must be a positive integer; try 16 or 32")
        return r

    @field_validator("blocks", mode="before")
    @classmethod
    def _canonical_blocks(cls, blocks: object) -> tuple[str, ...]:
        """('mlp', 'attn'), ['attn', 'mlp', 'mlp'] and ('attn', 'mlp') are the same adapter."""
        if isinstance(blocks, str):
            blocks = (blocks,)
        if not isinstance(blocks, (list, tuple)):
            raise ValueError(f"blocks must be a list of block names from {list(BLOCKS)}")
        unknown = [b for b in blocks if b not in BLOCKS]
        if unknown or not blocks:
            raise ValueError(
                f"has unknown block name(s) {unknown or list(blocks)}; use a non-empty subset of {list(BLOCKS)}"
            )
        return tuple(b for b in BLOCKS if b in blocks)
