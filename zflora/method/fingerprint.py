"""A fingerprint of a base model: architecture, shapes and a projection of its weights.

Adapters record the fingerprint of the base they were trained on and refuse to load onto
another one (invariant I6). The weights part is a random projection (fixed signs, K
numbers) of an evenly spaced sample of every weight tensor: fast on billion-parameter
models, and compared with a relative tolerance, so the same weights loaded in float32,
bfloat16 or float16, or on another device, match (rounding moves the projection by about
the dtype's precision, 0.4% for bfloat16), while other weights land far away (~100%).
A hash of rounded values cannot do this: some sampled value always sits on a rounding
boundary that one dtype crosses and another does not.
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


PROJECTIONS = 16
TOLERANCE = 0.02  # relative distance under which two projections are the same weights


def weights_projection(named_tensors: list[tuple[str, torch.Tensor]]) -> list[float]:
    """K numbers that summarise the weights; equal weights in any dtype give nearly equal numbers."""
    total = torch.zeros(PROJECTIONS, dtype=torch.float64)
    for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
        flat = tensor.detach().reshape(-1)
        count = min(flat.numel(), SAMPLES_PER_TENSOR)
        # integer arithmetic on the CPU: the same indices on every device and for any size
        # (a float32 linspace rounds past the end above 2**24 elements)
        index = torch.arange(count, dtype=torch.int64) * (flat.numel() - 1) // max(count - 1, 1)
        sample = flat[index.to(flat.device)].to(torch.float64).cpu()
        seed = int.from_bytes(hashlib.sha256(f"{name}:{tuple(tensor.shape)}".encode()).digest()[:8], "little")
        generator = torch.Generator().manual_seed(seed % (2**63))
        signs = torch.randint(0, 2, (PROJECTIONS, count), generator=generator, dtype=torch.int8) * 2 - 1
        total += signs.to(torch.float64) @ sample
    return [float(f"{value:.8g}") for value in total.tolist()]


def same_weights(a: list[float], b: list[float]) -> bool:
    if not isinstance(a, list) or not isinstance(b, list) or len(a) != len(b):
        return False
    distance = sum((x - y) ** 2 for x, y in zip(a, b)) ** 0.5
    scale = max(sum(x * x for x in a) ** 0.5, sum(y * y for y in b) ** 0.5, 1e-12)
    return distance <= TOLERANCE * scale


def same_base(expected: dict[str, Any], found: dict[str, Any]) -> bool:
    """Whether two fingerprints describe the same base: equal shapes, weights within tolerance."""
    keys = set(expected) | set(found)
    return all(
        same_weights(expected.get(k), found.get(k)) if k == "weights" else expected.get(k) == found.get(k)
        for k in keys
    )


def base_fingerprint(model: nn.Module) -> dict[str, Any]:
    """Fingerprint of an (unwrapped) transformers causal LM."""
    config = model.config
    shapes = {key: getattr(config, key, None) for key in SHAPE_KEYS}
    if shapes["head_dim"] is None:
        shapes["head_dim"] = config.hidden_size // config.num_attention_heads
    return {
        "architecture": type(model).__name__,
        **shapes,
        "weights": weights_projection(list(model.named_parameters())),
    }


def describe_mismatch(expected: dict[str, Any], found: dict[str, Any]) -> str:
    """The first fields in which two fingerprints differ, for an error message."""
    diffs = []
    for key in sorted(set(expected) | set(found)):
        if key == "weights":
            if not same_weights(expected.get(key), found.get(key)):
                diffs.append("weights differ (same shapes, other values)")
        elif expected.get(key) != found.get(key):
            diffs.append(f"{key}: adapter has {expected.get(key)!r}, model has {found.get(key)!r}")
    return "; ".join(diffs[:3])
