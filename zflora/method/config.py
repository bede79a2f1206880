"""ZFLoRAConfig: the settings of one zFLoRA adapter (rank, blocks, initialisation, dtype)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from zflora.errors import ZFLoRAError, check_fields

BLOCKS = ("attn", "mlp")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class ZFLoRAConfig:
    """Settings of one zFLoRA adapter.

    The residual stream is widened from d to d + r channels; each adapted block reads the
    r adapter channels through extra input columns of its projections and writes them
    through extra output rows (docs/method.md).
    """

    r: int = field(default=16, metadata={"help": "adapter rank: extra residual channels (> 0)"})
    blocks: tuple[str, ...] = field(
        default=BLOCKS,
        metadata={
            "help": "blocks that read and write the adapter channels: ('attn', 'mlp'), ('attn',) or ('mlp',)"
        },
    )
    init_scale: float = field(
        default=0.02,
        metadata={"help": "std of the readers' random init; writers start at zero so step 0 equals the base"},
    )
    dtype: str = field(
        default="auto",
        metadata={"help": "adapter parameter dtype: 'auto' (= base weights), float32, bfloat16 or float16"},
    )
    seed: int | None = field(
        default=None, metadata={"help": "seed for the readers' init (None: torch's RNG)"}
    )

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ZFLoRAError(f"ZFLoRAConfig.r must be a positive integer, got {self.r!r}; try r=16 or r=32")
        if isinstance(self.blocks, str):
            self.blocks = (self.blocks,)
        blocks = tuple(self.blocks)
        unknown = [b for b in blocks if b not in BLOCKS]
        if unknown or not blocks:
            raise ZFLoRAError(
                f"ZFLoRAConfig.blocks has unknown block name(s) {unknown or list(blocks)}; "
                f"use a non-empty subset of {list(BLOCKS)}"
            )
        # canonical order, no duplicates: ('mlp', 'attn') and ('attn', 'mlp') are the same adapter
        self.blocks = tuple(b for b in BLOCKS if b in blocks)
        if not isinstance(self.init_scale, (int, float)) or not (0 < float(self.init_scale) < 10):
            raise ZFLoRAError(
                f"ZFLoRAConfig.init_scale must be a number in (0, 10), got {self.init_scale!r}; try 0.02"
            )
        self.init_scale = float(self.init_scale)
        if self.dtype not in DTYPES:
            raise ZFLoRAError(f"ZFLoRAConfig.dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ZFLoRAError(f"ZFLoRAConfig.seed must be an integer or None, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["blocks"] = list(self.blocks)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "adapter config") -> ZFLoRAConfig:
        """Build a config from JSON data, rejecting unknown fields with a clear message."""
        check_fields(cls, data, source, kind="a JSON object")
        data = dict(data)
        if "blocks" in data and isinstance(data["blocks"], list):
            data["blocks"] = tuple(data["blocks"])
        try:
            return cls(**data)
        except ZFLoRAError as e:
            raise ZFLoRAError(f"{source}: {e}") from None
