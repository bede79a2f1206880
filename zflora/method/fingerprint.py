"""A fingerprint of a base model: architecture, shapes and a checksum of its weights.

Adapters record the fingerprint of the base they were trained on and refuse to load onto
another one (invariant I6). The checksum hashes an evenly spaced sample of every weight
tensor, rounded to bfloat16, so it is fast on billion-parameter models and stays the same
when the same weights are loaded in float32, bfloat16 or on another device.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

SAMPLES_PER_TENSOR = 4096
SHAPE_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "vocab_size",
    "tie_word_embeddings",
)


def weights_checksum(named_tensors: list[tuple[str, torch.Tensor]]) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
        flat = tensor.detach().reshape(-1)
        count = min(flat.numel(), SAMPLES_PER_TENSOR)
        # integer arithmetic on the CPU: the same indices on every device and for any size
        # (a float32 linspace rounds past the end above 2**24 elements)
        index = torch.arange(count, dtype=torch.int64) * (flat.numel() - 1) // max(count - 1, 1)
        sample = flat[index.to(flat.device)].to(torch.bfloat16).view(torch.int16).cpu().numpy().tobytes()
        digest.update(f"{name}:{tuple(tensor.shape)}:".encode())
        digest.update(sample)
    return digest.hexdigest()


def base_fingerprint(model: nn.Module) -> dict[str, Any]:
    """Fingerprint of an (unwrapped) transformers causal LM."""
    config = model.config
    shapes = {key: getattr(config, key, None) for key in SHAPE_KEYS}
    if shapes["head_dim"] is None:
        shapes["head_dim"] = config.hidden_size // config.num_attention_heads
    return {
        "architecture": type(model).__name__,
        **shapes,
        "weights_sha256": weights_checksum(list(model.named_parameters())),
    }


def describe_mismatch(expected: dict[str, Any], found: dict[str, Any]) -> str:
    """The first fields in which two fingerprints differ, for an error message."""
    diffs = []
    for key in sorted(set(expected) | set(found)):
        if expected.get(key) != found.get(key):
            if key == "weights_sha256":
                diffs.append("weights differ (same shapes, other values)")
            else:
                diffs.append(f"{key}: adapter has {expected.get(key)!r}, model has {found.get(key)!r}")
    return "; ".join(diffs[:3])
