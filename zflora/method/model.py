"""ZFLoRAModel: a transformers causal LM with named zFLoRA adapters (training form).

    import zflora
    zm = zflora.get_zflora_model(model, zflora.ZFLoRAConfig(r=16))
    zm(input_ids=ids).logits; zm.generate(ids, max_new_tokens=8)
    zm.save_adapter("out/adapter"); fused = zm.fuse()

The base model's modules are wrapped in place (like PEFT): its weights are frozen and
shared, never copied; only the adapter matrices are trainable.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zflora.errors import ZFLoRAError
from zflora.method.adapter_file import AdapterWeights, check_adapter, read_adapter, write_adapter
from zflora.method.architectures import Layout, adapter_shapes, layout_for, set_submodule
from zflora.method.config import ZFLoRAConfig
from zflora.method.fingerprint import base_fingerprint, describe_mismatch, same_base
from zflora.method.layer import AdapterState, Reader, StreamEntry, StreamExit, StreamNorm, Writer, ZFLoRALayer

_NAME_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


def _dtype_of(config: ZFLoRAConfig, like: torch.Tensor) -> torch.dtype:
    """The adapter's parameter dtype: 'auto' keeps float32 on a half-precision base (as PEFT
    does for LoRA), so small updates are not rounded away; otherwise the base's dtype."""
    if config.dtype != "auto":
        return getattr(torch, config.dtype)
    return torch.float32 if like.dtype in (torch.float16, torch.bfloat16) else like.dtype


class ZFLoRAModel(nn.Module):
    """A causal LM whose residual stream is widened by the active adapter's r channels.

    Attributes it does not define (config, activation_checkpointing_enable, ...) come from
    the wrapped transformers model, so Trainer and generation code treat it like one.
    """

    def __init__(self, model: nn.Module, config: ZFLoRAConfig, adapter_name: str = "default") -> None:
        super().__init__()
        if any(isinstance(m, ZFLoRALayer) for m in model.modules()):
            raise ZFLoRAError(
                "this model already carries zFLoRA layers; call add_adapter on its ZFLoRAModel instead"
            )
        if not isinstance(config, ZFLoRAConfig):
            raise ZFLoRAError(f"config must be a zflora.ZFLoRAConfig, got {type(config).__name__}")
        self.layout: Layout = layout_for(model)
        self.base_fingerprint: dict[str, Any] = base_fingerprint(model)
        self.d: int = model.config.hidden_size
        self.model = model
        self.adapter_configs: dict[str, ZFLoRAConfig] = {}
        self._state = AdapterState()
        for param in model.parameters():
            param.requires_grad_(False)
        self._wrapped: list[tuple[str, ZFLoRALayer]] = []  # (module path, layer)
        self._inject()
        self.add_adapter(adapter_name, config)
        self.set_adapter(adapter_name)

    # ------------------------------------------------------------------ structure
    def _inject(self) -> None:
        layout, model, d, state = self.layout, self.model, self.d, self._state
        embed = model.get_submodule(layout.embed)
        head = model.get_submodule(layout.lm_head)
        tied = head.weight is embed.weight or head.weight.data_ptr() == embed.weight.data_ptr()
        entry = StreamEntry(embed, state, d)
        self._wrap(layout.embed, entry)
        for index, _ in enumerate(model.get_submodule(layout.layers)):
            prefix = f"{layout.layers}.{index}"
            for norm in layout.norms:
                self._wrap(f"{prefix}.{norm}", StreamNorm(model.get_submodule(f"{prefix}.{norm}"), state, d))
            for _, path in layout.readers:
                self._wrap(f"{prefix}.{path}", Reader(model.get_submodule(f"{prefix}.{path}"), state, d))
            for _, path in layout.writers:
                self._wrap(f"{prefix}.{path}", Writer(model.get_submodule(f"{prefix}.{path}"), state, d))
        self._wrap(layout.final_norm, StreamNorm(model.get_submodule(layout.final_norm), state, d))
        self._wrap(layout.lm_head, StreamExit(head, state, d, entry if tied else None))
        self.tied = tied

    def _wrap(self, path: str, layer: ZFLoRALayer) -> None:
        set_submodule(self.model, path, layer)
        self._wrapped.append((path, layer))

    def _adapter_slots(self, config: ZFLoRAConfig) -> Iterator[tuple[str, nn.Module, str]]:
        """(tensor key, layer, attribute) for every matrix an adapter with `config` owns."""
        for key in self._adapter_shapes(config):
            path, attr = key.rsplit(".", 1)
            yield key, self.model.get_submodule(path), attr

    def _adapter_shapes(self, config: ZFLoRAConfig) -> dict[str, tuple[int, int]]:
        return adapter_shapes(self.model, config.blocks, config.r, self.d, self.tied)

    @classmethod
    def from_pretrained(
        cls,
        base: nn.Module | str | Path,
        adapter: str | Path | AdapterWeights,
        adapter_name: str | None = None,
        **load_kwargs: Any,
    ) -> ZFLoRAModel:
        """Wrap `base` and load a saved adapter into it, active: the one way to rebuild a trained model.

        `base` is a transformers causal LM or anything `load_causal_lm` takes (a directory,
        a hub id, a .gguf file or a preset; `load_kwargs` go there: dtype, device, ...).
        The adapter is read and checked before a base is loaded from disk.
        """
        from zflora.method.loading import load_causal_lm

        weights = adapter if isinstance(adapter, AdapterWeights) else read_adapter(adapter)
        if not isinstance(base, nn.Module):
            base, _ = load_causal_lm(base, with_tokenizer=False, **load_kwargs)
        name = adapter_name or weights.name
        zm = cls(base, weights.config, name)
        zm.load_adapter(weights, name)
        return zm

    # ------------------------------------------------------------------ adapters
    @property
    def active_adapter(self) -> str | None:
        return self._state.active

    @property
    def adapters(self) -> list[str]:
        return list(self.adapter_configs)

    def add_adapter(self, adapter_name: str, config: ZFLoRAConfig) -> None:
        """Add a new adapter (readers small random, writers zero: output equals the base)."""
        if not isinstance(adapter_name, str) or not _NAME_RE.match(adapter_name):
            raise ZFLoRAError(f"adapter name {adapter_name!r} is invalid; use letters, digits, '_' or '-'")
        if adapter_name in self.adapter_configs:
            raise ZFLoRAError(
                f"adapter {adapter_name!r} already exists; pick another name or delete_adapter it first"
            )
        if not isinstance(config, ZFLoRAConfig):
            raise ZFLoRAError(f"config must be a zflora.ZFLoRAConfig, got {type(config).__name__}")
        generator = None
        if config.seed is not None:
            generator = torch.Generator().manual_seed(config.seed)
        for _, layer, _ in self._adapter_slots(config):
            layer.add(
                adapter_name, config.r, _dtype_of(config, layer.base.weight), config.init_scale, generator
            )
        self.adapter_configs[adapter_name] = config
        self._state.ranks[adapter_name] = config.r
        self._update_trainable()

    def set_adapter(self, adapter_name: str) -> None:
        """Make `adapter_name` the adapter that runs (and the only trainable one)."""
        self._require(adapter_name)
        self._state.active = adapter_name
        self._update_trainable()

    def delete_adapter(self, adapter_name: str) -> None:
        self._require(adapter_name)
        for _, layer in self._wrapped:
            layer.delete_adapter(adapter_name)
        del self.adapter_configs[adapter_name]
        del self._state.ranks[adapter_name]
        if self._state.active == adapter_name:
            self._state.active = next(iter(self.adapter_configs), None)
        self._update_trainable()

    @contextlib.contextmanager
    def disable_adapters(self) -> Iterator[None]:
        """Run the plain base model inside the block (bit-identical base outputs)."""
        previous = self._state.disabled
        self._state.disabled = True
        try:
            yield
        finally:
            self._state.disabled = previous

    def _require(self, adapter_name: str) -> None:
        if adapter_name not in self.adapter_configs:
            raise ZFLoRAError(f"no adapter named {adapter_name!r}; this model has {self.adapters}")

    def _update_trainable(self) -> None:
        for name, param in self.named_parameters():
            param.requires_grad_(_is_adapter_param(name) and name.rsplit(".", 1)[-1] == self._state.active)

    def adapter_state_dict(self, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
        """The matrices of one adapter keyed by base module path ('model.layers.0.self_attn.q_proj.B')."""
        name = adapter_name or self._state.active
        self._require(name)
        return {
            key: getattr(layer, attr)[name]
            for key, layer, attr in self._adapter_slots(self.adapter_configs[name])
        }

    def adapter_weights(self, adapter_name: str | None = None) -> AdapterWeights:
        name = adapter_name or self._state.active
        tensors = {k: v.detach() for k, v in self.adapter_state_dict(name).items()}
        return AdapterWeights(self.adapter_configs[name], self.base_fingerprint, self.d, tensors, name=name)

    def save_adapter(self, path: str | Path, adapter_name: str | None = None) -> Path:
        """Write `adapter_model.safetensors` and `adapter_config.json` (with the base fingerprint)."""
        return write_adapter(path, self.adapter_weights(adapter_name))

    def load_adapter(self, path: str | Path | AdapterWeights, adapter_name: str | None = None) -> str:
        """Load an adapter saved for this base model; returns its name (not activated: use set_adapter)."""
        weights = path if isinstance(path, AdapterWeights) else read_adapter(path)
        self.check_compatible(weights)
        name = adapter_name or weights.name
        check_adapter(weights, self._adapter_shapes(weights.config))
        expected = {key: (layer, attr) for key, layer, attr in self._adapter_slots(weights.config)}
        # validated: only now replace an adapter of the same name. With the same config the
        # values are copied into the existing parameters, so an optimiser holding them (a
        # Trainer resuming from a checkpoint) keeps working.
        was_active = self._state.active == name
        if name in self.adapter_configs and self.adapter_configs[name] != weights.config:
            self.delete_adapter(name)
        if name not in self.adapter_configs:
            self.add_adapter(name, weights.config)
        with torch.no_grad():
            for key, (layer, attr) in expected.items():
                getattr(layer, attr)[name].copy_(weights.tensors[key])
        if was_active:
            self.set_adapter(name)
        return name

    def check_compatible(self, weights: AdapterWeights) -> None:
        """Refuse an adapter trained on another base model (fingerprint mismatch)."""
        if not same_base(weights.base_fingerprint, self.base_fingerprint):
            raise ZFLoRAError(
                f"adapter {weights.source!r} was trained on another base model "
                f"({describe_mismatch(weights.base_fingerprint, self.base_fingerprint)}); "
                "load it onto the base model it was trained on"
            )

    # ------------------------------------------------------------------ export
    def fuse(self, adapter_name: str | None = None) -> nn.Module:
        """A standard transformers model (same class, hidden size d + r) with the adapter folded in."""
        from zflora.method.fusion import fuse_adapter

        name = adapter_name or self._state.active
        self._require(name)
        return fuse_adapter(self, name)

    def base_state_dict(self) -> dict[str, torch.Tensor]:
        """The base model's parameters under their original names (wrappers' `.base` removed)."""
        out = {}
        for name, param in self.model.named_parameters():
            if _is_adapter_param(name):
                continue
            out[name.replace(".base.", ".")] = param
        return out

    def unload(self) -> nn.Module:
        """Remove the zFLoRA layers and return the plain base model (weights untouched)."""
        for path, layer in reversed(self._wrapped):
            set_submodule(self.model, path, layer.base)
        self._wrapped = []
        return self.model

    # ------------------------------------------------------------------ nn / HF plumbing
    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):  # noqa: D401
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)

    def generate(self, *args, **kwargs):
        return self.model.generate(*args, **kwargs)

    def trainable_parameter_count(self) -> tuple[int, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, sum(p.numel() for p in self.parameters())

    def print_trainable_parameters(self) -> None:
        trainable, total = self.trainable_parameter_count()
        print(
            f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"
        )

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)


def _is_adapter_param(name: str) -> bool:
    """Adapter matrices live in ParameterDicts named P, B, A or Q: '<path>.B.<adapter>'."""
    parts = name.split(".")
    return len(parts) >= 2 and parts[-2] in ("P", "B", "A", "Q")


def get_zflora_model(
    model: nn.Module, config: ZFLoRAConfig | None = None, adapter_name: str = "default"
) -> ZFLoRAModel:
    """Wrap a transformers causal LM (Llama, Mistral, Qwen2) with a zFLoRA adapter named `adapter_name`."""
    return ZFLoRAModel(model, config or ZFLoRAConfig(), adapter_name)
