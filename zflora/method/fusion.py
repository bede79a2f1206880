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
from zflora.method.adapter_file import AdapterWeights, check_adapter, read_adapter
from zflora.method.architectures import Layout, adapter_shapes, layout_for
from zflora.method.fingerprint import describe_mismatch, same_base
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
        for name, value in slices.items():
            if not torch.isfinite(value).all():
                raise ZFLoRAError(
                    f"adapter {weights.source!r}: its {name} product overflows ({value.dtype}); not fusing it"
                )
        # keep one model's products: the common case is one fused model per process
        for stale in [k for k in weights.cache if k.startswith("stream-ends:")]:
            del weights.cache[stale]
        weights.cache[key] = slices
    return weights.cache[key]


def _slots(fused: nn.Module, layout: Layout, meta: dict[str, Any]) -> list[tuple[str, torch.Tensor, int]]:
    """(adapter key, full-width adapter slice of the fused weight, channel dim) for every slot, cached.

    Readers hold the adapter channels as their last input columns, writers as their last
    output rows, the embedding (and an untied head) as their last columns. The views are
    built once per fused model, so a swap only copies.
    """
    embed = fused.get_submodule(layout.embed).weight
    stamp = (embed.data_ptr(), embed.dtype, embed.device)  # views go stale when the model moves
    cached = getattr(fused, "_zflora_slots", None)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    d = meta["base_hidden_size"]
    every = adapter_shapes(fused, ("attn", "mlp"), 1, d, meta["tied"])
    slots = []
    for key in every:
        path, attr = key.rsplit(".", 1)
        weight = fused.get_submodule(path).weight
        if attr == "P":
            slots.append(("embed", weight[:, d:], 1))
        elif attr == "Q":
            slots.append(("head", weight[:, d:], 1))
        elif attr == "B":
            slots.append((key, weight[:, d:], 1))
        else:
            slots.append((key, weight[d:, :], 0))
    norms = [
        fused.get_submodule(path).weight[d:] for path in _norm_paths(layout, fused.config.num_hidden_layers)
    ]
    fused._zflora_slots = (stamp, (slots, norms))
    return slots, norms


def adapter_slice_values(fused: nn.Module, weights: AdapterWeights) -> dict[str, torch.Tensor]:
    """What an adapter puts into a fused model's adapter slices, checked, by slot key.

    Keys are the adapter's own tensor keys ('<module path>.B' for a reader's extra input
    columns, '.A' for a writer's extra output rows) plus 'embed' (E·P) and, untied, 'head'
    (W_h·Q), the products cached on `weights` for this model. The adapter must have been
    trained on this model's base (fingerprint), fit its width (r <= w) and match its
    shapes with finite values: a ZFLoRAError otherwise, before anything is written.
    `swap_adapter` writes these values; `zflora.method.mixed` applies them per row.
    """
    meta = fused_meta(fused)
    layout = layout_for(fused)
    d, width = meta["base_hidden_size"], meta["width"]
    if not same_base(weights.base_fingerprint, meta["base_fingerprint"]):
        raise ZFLoRAError(
            f"adapter {weights.source!r} was trained on another base model than this fused model's "
            f"({describe_mismatch(weights.base_fingerprint, meta['base_fingerprint'])}); use an adapter of that base"
        )
    r = weights.config.r
    if r > width:
        raise ZFLoRAError(
            f"adapter {weights.source!r} has r={r} but this fused model has room for {width} "
            f"adapter channels; fuse the base again with this adapter (zflora fuse)"
        )
    # like PEFT's safe merge: keys, shapes and values are checked before the first write
    check_adapter(weights, adapter_shapes(fused, weights.config.blocks, r, d, meta["tied"]))
    values = dict(weights.tensors)
    values.update(_stream_end_slices(fused, weights, layout, d))
    return values


def adapter_norm_value(fused: nn.Module, r: int | None) -> float:
    """The norms' adapter-channel gamma with an adapter of rank r (None: the base, 1.0).

    sqrt((d + r) / (d + w)): 1 without padding, and the value that makes the padded norm
    equal the unpadded one otherwise (see layer.stream_norm_weight).
    """
    meta = fused_meta(fused)
    d, width = meta["base_hidden_size"], meta["width"]
    return ((d + r) / (d + width)) ** 0.5 if r is not None else 1.0


@torch.no_grad()
def swap_adapter(fused: nn.Module, adapter: str | Path | AdapterWeights | None) -> nn.Module:
    """Switch a fused model to another adapter in place; None restores the exact base model.

    Only the adapter slices are overwritten (O(adapter size), no allocation of base
    weights). The adapter must have been trained on this model's base (fingerprint check).
    Every key, shape and value is checked before the first write, so a bad adapter leaves
    the model exactly as it was; the check runs once per adapter and model, and the slices
    are written with one fused copy per swap.
    """
    meta = fused_meta(fused)
    layout = layout_for(fused)
    width = meta["width"]
    weights = read_adapter(adapter) if isinstance(adapter, (str, Path)) else adapter
    if weights is not None and not isinstance(weights, AdapterWeights):
        raise ZFLoRAError(
            f"swap_adapter takes an adapter directory, AdapterWeights or None, got {type(adapter).__name__}"
        )
    values = adapter_slice_values(fused, weights) if weights is not None else {}
    r = weights.config.r if weights is not None else 0

    slots, norms = _slots(fused, layout, meta)
    # values finite in the adapter's float32 can overflow a half-precision model: checked once
    # per adapter and dtype, like the rest before the first write
    fits = f"fits:{fused.get_submodule(layout.embed).weight.dtype}"
    check_cast = weights is not None and fits not in weights.cache
    targets, sources, zeros = [], [], []
    for key, full, dim in slots:
        value = values.get(key)
        if value is None:
            zeros.append(full)
            continue
        if r < width:
            zeros.append(full.narrow(dim, r, width - r))
        targets.append(full.narrow(dim, 0, r))
        source = value if value.dtype == full.dtype and value.device == full.device else value.to(full)
        if check_cast and source is not value and not torch.isfinite(source).all():
            raise ZFLoRAError(
                f"adapter {weights.source!r}: {key} holds values beyond the range of this model's "
                f"{full.dtype}; not swapping it in (re-train it with smaller values, or use a wider dtype)"
            )
        sources.append(source)
    if check_cast:
        weights.cache[fits] = True
    if zeros:
        torch._foreach_zero_(zeros)
    if targets:
        torch._foreach_copy_(targets, sources)
    norm_value = adapter_norm_value(fused, r if weights is not None else None)
    for norm in norms:
        norm.fill_(norm_value)
    meta.update(
        adapter=weights.name if weights is not None else None,
        r=r,
        blocks=list(weights.config.blocks) if weights is not None else [],
    )
    return fused
