"""One factory for every method the project compares: base, lora, zflora, zflora-mha, fft, and
lora-eqparams / zflora-eqparams (the same methods at an equal trainable-parameter budget).

    model = zflora.harness.methods.prepare("lora", base_model, AdapterSettings(r=16))  # PEFT LoRA
    zflora.harness.methods.save_trained("lora", model, "out/lora")        # adapter or full weights
    model = zflora.harness.methods.load_trained("lora", "base_dir", "out/lora", merged=True)

LoRA is HF PEFT on the same target modules (q/k/v/o/gate/up/down) and rank as zFLoRA;
it is used, not re-implemented. At equal rank LoRA trains more parameters than zFLoRA
(r(in + out) per projection against r per reader output / writer input), so the
`-eqparams` methods take the rank whose trainable count is closest to the other method's
at `adapter.r`: `zflora-eqparams` has LoRA's budget, `lora-eqparams` has zFLoRA's.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from zflora.errors import ZFLoRAError
from zflora.harness.settings import (  # noqa: F401 - the method table, re-exported for callers
    DEFAULT_LEARNING_RATES,
    EQUAL_BUDGET,
    LORA_METHODS,
    METHODS,
    TRAINED_METHODS,
    ZFLORA_BLOCKS,
    AdapterSettings,
    check_method,
)

if TYPE_CHECKING:
    from torch import nn


def lora_target_modules(model: nn.Module) -> list[str]:
    """The projection names zFLoRA adapts, as PEFT target modules (q_proj, ..., down_proj)."""
    from zflora.method.architectures import layout_for

    layout = layout_for(model)
    return [path.rsplit(".", 1)[-1] for _, path in (*layout.readers, *layout.writers)]


def lora_config(
    adapter: AdapterSettings, model: nn.Module, dropout: float = 0.0, inference_mode: bool = False
):
    """PEFT LoraConfig on q/k/v/o/gate/up/down with `adapter`'s rank and alpha (default 2r): the one
    LoRA baseline that training, evaluation, the profiler and the demo all use."""
    from peft import LoraConfig

    return LoraConfig(
        r=adapter.r,
        lora_alpha=adapter.lora_alpha if adapter.lora_alpha is not None else 2 * adapter.r,
        lora_dropout=dropout,
        target_modules=lora_target_modules(model),
        bias="none",
        task_type="CAUSAL_LM",
        inference_mode=inference_mode,
    )


def adapter_for(method: str, adapter: AdapterSettings, model: nn.Module) -> AdapterSettings:
    """`adapter` as `method` trains it: the -eqparams methods get the rank whose trainable-parameter
    count on `model` is closest to their reference method's at `adapter.r`."""
    if method not in EQUAL_BUDGET:
        return adapter
    budget = trainable_per_rank(EQUAL_BUDGET[method], model) * adapter.r
    return adapter.model_copy(update={"r": max(1, round(budget / trainable_per_rank(method, model)))})


def zflora_config(adapter: AdapterSettings, method: str, seed: int | None = None):
    """The ZFLoRAConfig of `method` (zflora: attn+mlp, zflora-mha: attn) with `adapter`'s rank and init."""
    from zflora.method.config import ZFLoRAConfig

    return ZFLoRAConfig(r=adapter.r, blocks=ZFLORA_BLOCKS[method], init_scale=adapter.init_scale, seed=seed)


def trainable_per_rank(method: str, model: nn.Module) -> int:
    """Trainable parameters per unit of rank of an adapter method on `model` (both are linear in r)."""
    from zflora.method.architectures import adapter_shapes, layout_for

    if method in LORA_METHODS:
        layout = layout_for(model)
        layers = model.get_submodule(layout.layers)
        return sum(
            sum(layer.get_submodule(path).weight.shape)
            for layer in layers
            for _, path in (*layout.readers, *layout.writers)
        )
    if method in ZFLORA_BLOCKS:
        d = model.config.hidden_size
        tied = bool(getattr(model.config, "tie_word_embeddings", False))
        return sum(
            rows * cols for rows, cols in adapter_shapes(model, ZFLORA_BLOCKS[method], 1, d, tied).values()
        )
    raise ZFLoRAError(f"method {method!r} has no rank")


def prepare(
    method: str, model: nn.Module, adapter: AdapterSettings | None = None, seed: int | None = None
) -> nn.Module:
    """Make `model` ready to train with `method`; returns the model to hand to a Trainer.

    base: all weights frozen (nothing to train). lora: a PEFT model with LoRA on
    q/k/v/o/gate/up/down. zflora / zflora-mha: a ZFLoRAModel (attn+mlp / attn only).
    fft: every weight trainable. `adapter` sets the rank, LoRA alpha and zFLoRA init;
    the -eqparams methods change the rank to match the other method's budget (for_method).
    """
    from zflora.method.architectures import layout_for
    from zflora.method.model import get_zflora_model

    check_method(method)
    layout_for(model)  # same architecture support for every method, so comparisons are like for like
    adapter = adapter_for(method, adapter or AdapterSettings(), model)
    if method == "base":
        for param in model.parameters():
            param.requires_grad_(False)
        return model
    if method == "fft":
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    if method in LORA_METHODS:
        from peft import get_peft_model

        return get_peft_model(model, lora_config(adapter, model))
    return get_zflora_model(model, zflora_config(adapter, method, seed))


def save_trained(method: str, model: nn.Module, out_dir: str | Path, tokenizer=None) -> Path:
    """Save what a trained method needs to be rebuilt on its base: an adapter, or full weights for fft.

    Written atomically; `tokenizer` is stored next to full weights (fft) so they load alone.
    """
    check_method(method)
    out_dir = Path(out_dir)
    if method == "base":
        raise ZFLoRAError("method 'base' has nothing to save; it is the base model itself")
    if method in ZFLORA_BLOCKS:
        return model.save_adapter(out_dir)
    from zflora.method.atomic import atomic_dir

    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        if method == "fft" and tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out_dir


def load_trained(
    method: str, base: nn.Module, artifact_dir: str | Path | None, merged: bool = False
) -> nn.Module:
    """Rebuild a trained method on a freshly loaded `base` model for evaluation.

    lora: PEFT model (unmerged), or merged into the weights with merged=True.
    zflora*: ZFLoRAModel (unfused training form) with the saved adapter active.
    fft: `artifact_dir` holds the full model; `base` is ignored.
    """
    check_method(method)
    if method == "base":
        return base
    if artifact_dir is None or not Path(artifact_dir).exists():
        raise ZFLoRAError(f"no trained {method} artifact at {str(artifact_dir)!r}; train the method first")
    if method in LORA_METHODS:
        from peft import PeftModel

        peft_model = PeftModel.from_pretrained(base, str(artifact_dir))
        return peft_model.merge_and_unload() if merged else peft_model
    if method in ZFLORA_BLOCKS:
        from zflora.method.model import ZFLoRAModel

        return ZFLoRAModel.from_pretrained(base, artifact_dir)
    from zflora.method.loading import load_causal_lm

    return load_causal_lm(artifact_dir)[0]
