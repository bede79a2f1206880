"""The on-disk adapter: `adapter_model.safetensors` + `adapter_config.json`.

Weights load only through safetensors (no pickle). The JSON is validated field by field
before anything is used: a malformed, truncated or foreign file gives one ZFLoRAError
naming the file and the fix.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from zflora.errors import ZFLoRAError
from zflora.method.atomic import atomic_dir
from zflora.method.config import ZFLoRAConfig

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
FORMAT = "zflora-adapter"
FORMAT_VERSION = 1
_FIELDS = {
    "format": str,
    "format_version": int,
    "adapter_name": str,
    "config": dict,
    "base_hidden_size": int,
    "base_fingerprint": dict,
}


@dataclass
class AdapterWeights:
    """One adapter in memory: its config, the base it belongs to, and its matrices by module path."""

    config: ZFLoRAConfig
    base_fingerprint: dict[str, Any]
    base_hidden_size: int
    tensors: dict[str, torch.Tensor]
    name: str = "default"
    source: str = "<memory>"
    cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> AdapterWeights:
        tensors = {k: v.to(device=device, dtype=dtype) for k, v in self.tensors.items()}
        return AdapterWeights(
            self.config, self.base_fingerprint, self.base_hidden_size, tensors, self.name, self.source
        )

    def numel(self) -> int:
        return sum(t.numel() for t in self.tensors.values())


def check_adapter(weights: AdapterWeights, shapes: dict[str, tuple[int, int]]) -> None:
    """Refuse an adapter whose tensors are not exactly `shapes` (keys and shapes) or not finite.

    `shapes` comes from architectures.adapter_shapes for the model it is about to touch;
    loading and swapping call this before the first write, so a bad file changes nothing.
    The result is remembered per layout, so switching back to an adapter checks nothing twice.
    """
    signature = ("checked", tuple(shapes.items()))
    if weights.cache.get("checked") == signature:
        return
    missing = sorted(set(shapes) - set(weights.tensors))
    unexpected = sorted(set(weights.tensors) - set(shapes))
    if missing or unexpected:
        raise ZFLoRAError(
            f"adapter {weights.source!r} does not match its config (blocks={list(weights.config.blocks)}) "
            f"on this base: missing {missing[:2]}, unexpected {unexpected[:2]}; re-save the adapter"
        )
    for key, shape in shapes.items():
        tensor = weights.tensors[key]
        if tuple(tensor.shape) != shape:
            raise ZFLoRAError(
                f"adapter {weights.source!r}: {key} has shape {tuple(tensor.shape)}, expected {shape} for "
                f"r={weights.config.r} on this base; the file and its config disagree, re-save it"
            )
        if not torch.isfinite(tensor).all():
            raise ZFLoRAError(
                f"adapter {weights.source!r} has non-finite values in {key}; re-train or re-save it"
            )
    weights.cache["checked"] = signature


def write_adapter(path: str | Path, weights: AdapterWeights) -> Path:
    """Write an adapter directory atomically (temporary directory, then rename)."""
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "adapter_name": weights.name,
        "config": weights.config.to_dict(),
        "base_hidden_size": weights.base_hidden_size,
        "base_fingerprint": weights.base_fingerprint,
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in weights.tensors.items()}
    for key, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise ZFLoRAError(
                f"adapter {weights.name!r} has non-finite values in {key}; not saving a broken adapter"
            )
    with atomic_dir(path) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "zflora": FORMAT})
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return Path(path)


def read_adapter(path: str | Path) -> AdapterWeights:
    """Read and validate an adapter directory (or the path of its safetensors/JSON file)."""
    path = Path(path)
    if path.is_file() and path.name in (WEIGHTS_NAME, CONFIG_NAME):
        path = path.parent
    if not path.exists():
        raise ZFLoRAError(
            f"adapter path {str(path)!r} does not exist; pass the directory written by save_adapter"
        )
    if not path.is_dir():
        raise ZFLoRAError(
            f"adapter path {str(path)!r} is not a directory; pass the directory written by save_adapter"
        )
    config_path, weights_path = path / CONFIG_NAME, path / WEIGHTS_NAME
    for required in (config_path, weights_path):
        if not required.is_file():
            hint = (
                " (it looks like a PEFT LoRA adapter, not a zFLoRA one)"
                if (path / "adapter_config.json").exists() and required == weights_path
                else ""
            )
            raise ZFLoRAError(
                f"adapter directory {str(path)!r} has no {required.name}{hint}; pass a directory written by save_adapter"
            )
    meta = _read_meta(config_path)
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ZFLoRAError(
            f"adapter weights {str(weights_path)!r} are corrupt or truncated ({str(e).strip()[:80]}); "
            "copy the file again or re-save the adapter"
        ) from None
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ZFLoRAError(
                f"adapter weights {str(weights_path)!r} hold non-finite values in {key}; re-train or re-save it"
            )
    config = ZFLoRAConfig.from_dict(meta["config"], source=str(config_path))
    return AdapterWeights(
        config=config,
        base_fingerprint=meta["base_fingerprint"],
        base_hidden_size=meta["base_hidden_size"],
        tensors=tensors,
        name=meta["adapter_name"],
        source=str(path),
    )


def _read_meta(config_path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ZFLoRAError(
            f"adapter config {str(config_path)!r} is not valid JSON ({e}); re-save the adapter"
        ) from None
    if not isinstance(meta, dict):
        raise ZFLoRAError(f"adapter config {str(config_path)!r} must hold a JSON object; re-save the adapter")
    if meta.get("format") != FORMAT:
        found = meta.get("format", meta.get("peft_type", "unknown"))
        raise ZFLoRAError(
            f"{str(config_path)!r} is not a zFLoRA adapter config (format {found!r}); "
            "pass a directory written by zflora's save_adapter"
        )
    unknown = sorted(set(meta) - set(_FIELDS))
    if unknown:
        raise ZFLoRAError(
            f"adapter config {str(config_path)!r} has unknown field(s) {unknown}; re-save the adapter"
        )
    for key, kind in _FIELDS.items():
        value = meta.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ZFLoRAError(
                f"adapter config {str(config_path)!r}: field {key!r} must be {kind.__name__}, got {value!r}; re-save the adapter"
            )
    if meta["format_version"] > FORMAT_VERSION:
        raise ZFLoRAError(
            f"adapter config {str(config_path)!r} has format_version {meta['format_version']}, newer than this "
            f"zflora understands ({FORMAT_VERSION}); upgrade zflora"
        )
    if meta["base_hidden_size"] <= 0 or not math.isfinite(meta["base_hidden_size"]):
        raise ZFLoRAError(f"adapter config {str(config_path)!r}: base_hidden_size must be positive")
    return meta
