"""Lossless fusion and in-place adapter switching.

fuse_adapter(zm, name) builds a standard transformers model of the same class with
hidden_size = d + w (w = r, or r padded up so the config's head-count check passes) and
head_dim unchanged, copies the base weights into the [:d] slices, rescales every RMSNorm
(gamma' and eps'), then writes the adapter's slices with swap_adapter.

swap_adapter(fused, adapter) overwrites only the adapter slices of a fused model in place:
the extra embedding/LM-head columns, the readers' extra input columns, the writers' extra
output rows and the norms' adapter-channel gammas. No base weight is reallocated or
touched; None zeroes every slice, which gives the base model's outputs.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zflora.errors import ZFLoRAError
from zflora.method.adapter_file import AdapterWeights, read_adapter
from zflora.method.architectures import Layout, adapter_keys, layout_for
from zflora.method.fingerprint import describe_mismatch
from zflora.method.layer import stream_norm_weight

META_KEY = "zflora"
META_VERSION = 1
MAX_PADDING = 1024


def widened_config(config: Any, width: int, meta: dict[str, Any]) -> Any:
    """A copy of `config` with hidden size d + width, head_dim kept, RMSNorm eps rescaled."""
    d = config.hidden_size
    data = config.to_dict()
    data.update(
        hidden_size=d + width,
        head_dim=getattr(config, "head_dim", None) or d // config.num_attention_heads,
        rms_norm_eps=config.rms_norm_eps * d / (d + width),
    )
    data[META_KEY] = meta
    return type(config).from_dict(data)


def fused_width(config: Any, r: int, multiple: int = 1) -> int:
    """Smallest w >= r (a multiple of `multiple`) for which the config class accepts hidden d + w.

    Llama-family configs require hidden_size % num_attention_heads == 0; the channels
    between r and w are zero padding, lossless because the norms are rescaled for w.
    """
    start = -(-r // multiple) * multiple
    for width in range(start, start + MAX_PADDING + 1, multiple):
        try:
            widened_config(config, width, {})
        except Exception:  # the config class rejected this width (e.g. a head-count check)
            continue
        return width
    raise ZFLoRAError(
        f"no fused width near r={r} passes {type(config).__name__}'s checks; "
        f"try an r that makes hidden_size + r divisible by num_attention_heads={config.num_attention_heads}"
    )


def _build_like(model: nn.Module, config: Any) -> nn.Module:
    """An uninitialised model of the same class, device and dtype (weights are copied in next)."""
    from transformers.initialization import no_init_weights

    reference = next(model.parameters())
    with no_init_weights(), torch.device(reference.device):
        fused = type(model)._from_config(config, dtype=reference.dtype)
    fused.tie_weights()  # no_init_weights also skips tying
    fused.generation_config = copy.deepcopy(model.generation_config)
    fused.eval()
    return fused


def _norm_paths(layout: Layout, num_layers: int) -> list[str]:
    paths = [f"{layout.layers}.{i}.{norm}" for i in range(num_layers) for norm in layout.norms]
    return [*paths, layout.final_norm]


@torch.no_grad()
def widen_base(
    model: nn.Module, base_params: dict[str, torch.Tensor], width: int, meta: dict[str, Any]
) -> nn.Module:
    """A model of the same class and hidden d + width holding the base weights and zero adapter slices."""
    layout = layout_for(model)
    config = model.config
    d = config.hidden_size
    fused = _build_like(model, widened_config(config, width, meta))
    norms = {f"{p}.weight" for p in _norm_paths(layout, config.num_hidden_layers)}
    for name, target in fused.named_parameters():
        if name not in base_params:
            raise ZFLoRAError(f"cannot fuse {type(model).__name__}: parameter {name} has no base counterpart")
        source = base_params[name]
        if name in norms:
            target.copy_(stream_norm_weight(source, d, width, d + width))
            continue
        target.zero_()
        index = tuple(slice(0, n) for n in source.shape)
        target[index].copy_(source)
    fused.tie_weights()
    return fused


def fuse_adapter(zm: Any, adapter_name: str, multiple: int = 1) -> nn.Module:
    """Fold adapter `adapter_name` of a ZFLoRAModel into a standard transformers model."""
    config = zm.adapter_configs[adapter_name]
    base_config = zm.model.config
    width = fused_width(base_config, config.r, multiple)
    meta = {
        "format_version": META_VERSION,
        "base_hidden_size": zm.d,
        "width": width,
        "tied": zm.tied,
        "base_fingerprint": zm.base_fingerprint,
        "adapter": None,
        "r": 0,
        "blocks": [],
    }
    fused = widen_base(zm.model, zm.base_state_dict(), width, meta)
    swap_adapter(fused, zm.adapter_weights(adapter_name))
    return fused


def fused_meta(model: nn.Module) -> dict[str, Any]:
    meta = getattr(getattr(model, "config", None), META_KEY, None)
    if not isinstance(meta, dict) or "base_hidden_size" not in meta or "width" not in meta:
        raise ZFLoRAError(
            f"{type(model).__name__} is not a zFLoRA-fused model (its config has no '{META_KEY}' section); "
            "fuse one first with ZFLoRAModel.fuse or `zflora fuse`"
        )
    return meta


def _stream_end_slices(
    fused: nn.Module, weights: AdapterWeights, layout: Layout, d: int
) -> dict[str, torch.Tensor]:
    """E @ P for the embedding and W_h @ Q for an untied head, computed once per adapter and model."""
    embed = fused.get_submodule(layout.embed).weight
    key = f"stream-ends:{embed.device}:{embed.dtype}:{id(fused)}"
    if key not in weights.cache:
        P = weights.tensors[f"{layout.embed}.P"].to(embed.device, torch.float32)
        slices = {"embed": (embed[:, :d].float() @ P).to(embed.dtype)}
        q_key = f"{layout.lm_head}.Q"
        if q_key in weights.tensors:
            head = fused.get_submodule(layout.lm_head).weight
            Q = weights.tensors[q_key].to(head.device, torch.float32)
            slices["head"] = (head[:, :d].float() @ Q).to(head.dtype)
        weights.cache.clear()  # keep one model's slices: the common case is one fused model per process
        weights.cache[key] = slices
    return weights.cache[key]


@torch.no_grad()
def swap_adapter(fused: nn.Module, adapter: str | Path | AdapterWeights | None) -> nn.Module:
    """Switch a fused model to another adapter in place; None restores the exact base model.

    Only the adapter slices are overwritten (O(adapter size), no allocation of base
    weights). The adapter must have been trained on this model's base (fingerprint check).
    """
    meta = fused_meta(fused)
    layout = layout_for(fused)
    d, width = meta["base_hidden_size"], meta["width"]
    weights = read_adapter(adapter) if isinstance(adapter, (str, Path)) else adapter
    if weights is not None and not isinstance(weights, AdapterWeights):
        raise ZFLoRAError(
            f"swap_adapter takes an adapter directory, AdapterWeights or None, got {type(adapter).__name__}"
        )
    if weights is not None:
        if weights.base_fingerprint != meta["base_fingerprint"]:
            raise ZFLoRAError(
                f"adapter {weights.source!r} was trained on another base model than this fused model's "
                f"({describe_mismatch(weights.base_fingerprint, meta['base_fingerprint'])}); use an adapter of that base"
            )
        if weights.config.r > width:
            raise ZFLoRAError(
                f"adapter {weights.source!r} has r={weights.config.r} but this fused model has room for {width} "
                f"adapter channels; fuse the base again with this adapter (zflora fuse)"
            )
    r = weights.config.r if weights is not None else 0
    blocks = weights.config.blocks if weights is not None else ()
    tensors = weights.tensors if weights is not None else {}
    if weights is not None:
        expected = set(adapter_keys(layout, fused.config.num_hidden_layers, blocks, meta["tied"]))
        if set(tensors) != expected:
            missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
            raise ZFLoRAError(
                f"adapter {weights.source!r} does not match its config (blocks={list(blocks)}): "
                f"missing {missing[:2]}, unexpected {unexpected[:2]}; re-save the adapter"
            )

    # like PEFT's safe merge: check every value before the first write, so a broken adapter
    # leaves the model exactly as it was
    ends = _stream_end_slices(fused, weights, layout, d) if weights is not None else {}
    for key, tensor in [*tensors.items(), *ends.items()]:
        if not torch.isfinite(tensor).all():
            raise ZFLoRAError(
                f"adapter {weights.source!r} has non-finite values in {key}; not fusing it (re-train it)"
            )

    def put(target: torch.Tensor, value: torch.Tensor | None, dim: int) -> None:
        """`target` holds the adapter channels along `dim`: write `value` into the first r, zero the rest."""
        if value is None:
            target.zero_()
            return
        if r < width:
            target.narrow(dim, r, width - r).zero_()
        target = target.narrow(dim, 0, r)
        if tuple(value.shape) != tuple(target.shape):
            raise ZFLoRAError(
                f"adapter {weights.source!r}: a matrix has shape {tuple(value.shape)}, expected "
                f"{tuple(target.shape)} for r={r}; the file and its config disagree, re-save it"
            )
        target.copy_(value)

    put(fused.get_submodule(layout.embed).weight[:, d:], ends.get("embed"), 1)
    if not meta["tied"]:
        put(fused.get_submodule(layout.lm_head).weight[:, d:], ends.get("head"), 1)
    for index in range(fused.config.num_hidden_layers):
        prefix = f"{layout.layers}.{index}"
        for block, path in layout.readers:
            value = tensors.get(f"{prefix}.{path}.B") if block in blocks else None
            put(fused.get_submodule(f"{prefix}.{path}").weight[:, d:], value, 1)
        for block, path in layout.writers:
            value = tensors.get(f"{prefix}.{path}.A") if block in blocks else None
            put(fused.get_submodule(f"{prefix}.{path}").weight[d:, :], value, 0)
    if weights is not None:
        for path in _norm_paths(layout, fused.config.num_hidden_layers):
            fused.get_submodule(path).weight[d:].fill_(((d + r) / (d + width)) ** 0.5)
    meta.update(adapter=weights.name if weights is not None else None, r=r, blocks=list(blocks))
    return fused
