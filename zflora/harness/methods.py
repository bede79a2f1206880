"""One factory for every method the project compares: base, lora, zflora, zflora-mha, fft.

    model = zflora.harness.methods.prepare("lora", base_model, AdapterSettings(r=16))  # PEFT LoRA
    zflora.harness.methods.save_trained("lora", model, "out/lora")        # adapter or full weights
    model = zflora.harness.methods.load_trained("lora", "base_dir", "out/lora", merged=True)

LoRA is HF PEFT on the same target modules (q/k/v/o/gate/up/down) and rank as zFLoRA;
it is used, not re-implemented.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from zflora.errors import ZFLoRAError
from zflora.settings import Settings

if TYPE_CHECKING:
    from torch import nn

METHODS = ("base", "lora", "zflora", "zflora-mha", "fft")
TRAINED_METHODS = ("lora", "zflora", "zflora-mha", "fft")
# zflora-mha adapts the attention blocks only (the paper's zFLoRA-MHA variant)
ZFLORA_BLOCKS = {"zflora": ("attn", "mlp"), "zflora-mha": ("attn",)}
# default learning rates per method (adapters tolerate far larger steps than full fine-tuning)
DEFAULT_LEARNING_RATES = {"lora": 5e-3, "zflora": 1e-2, "zflora-mha": 1e-2, "fft": 1e-3}


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ZFLoRAError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    return method


def lora_target_modules(model: nn.Module) -> list[str]:
    """The projection names zFLoRA adapts, as PEFT target modules (q_proj, ..., down_proj)."""
    from zflora.method.architectures import layout_for

    layout = layout_for(model)
    return [path.rsplit(".", 1)[-1] for _, path in (*layout.readers, *layout.writers)]


class AdapterSettings(Settings):
    """Adapter shape shared by LoRA and zFLoRA: equal rank for a fair comparison."""

    r: int = Field(16, gt=0, description="rank of LoRA and zFLoRA (zFLoRA: extra residual channels)")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA alpha (default 2r)")
    init_scale: float = Field(0.02, gt=0, lt=10, description="std of zFLoRA readers' random init")

    def lora_config(self, model: nn.Module, dropout: float = 0.0, inference_mode: bool = False):
        """PEFT LoraConfig on q/k/v/o/gate/up/down with this rank and alpha (default 2r): the one
        LoRA baseline that training, evaluation, the profiler and the demo all use."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.lora_alpha if self.lora_alpha is not None else 2 * self.r,
            lora_dropout=dropout,
            target_modules=lora_target_modules(model),
            bias="none",
            task_type="CAUSAL_LM",
            inference_mode=inference_mode,
        )

    def zflora_config(self, method: str, seed: int | None = None):
        """The ZFLoRAConfig of `method` (zflora: attn+mlp, zflora-mha: attn) with this rank and init."""
        from zflora.method.config import ZFLoRAConfig

        return ZFLoRAConfig(r=self.r, blocks=ZFLORA_BLOCKS[method], init_scale=self.init_scale, seed=seed)


def prepare(
    method: str, model: nn.Module, adapter: AdapterSettings | None = None, seed: int | None = None
) -> nn.Module:
    """Make `model` ready to train with `method`; returns the model to hand to a Trainer.

    base: all weights frozen (nothing to train). lora: a PEFT model with LoRA on
    q/k/v/o/gate/up/down. zflora / zflora-mha: a ZFLoRAModel (attn+mlp / attn only).
    fft: every weight trainable. `adapter` sets the rank, LoRA alpha and zFLoRA init.
    """
    from zflora.method.architectures import layout_for
    from zflora.method.model import get_zflora_model

    check_method(method)
    adapter = adapter or AdapterSettings()
    layout_for(model)  # same architecture support for every method, so comparisons are like for like
    if method == "base":
        for param in model.parameters():
            param.requires_grad_(False)
        return model
    if method == "fft":
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    if method == "lora":
        from peft import get_peft_model

        return get_peft_model(model, adapter.lora_config(model))
    return get_zflora_model(model, adapter.zflora_config(method, seed))


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
    if method == "lora":
        from peft import PeftModel

        peft_model = PeftModel.from_pretrained(base, str(artifact_dir))
        return peft_model.merge_and_unload() if merged else peft_model
    if method in ZFLORA_BLOCKS:
        from zflora.method.model import ZFLoRAModel

        return ZFLoRAModel.from_pretrained(base, artifact_dir)
    from zflora.method.loading import load_causal_lm

    return load_causal_lm(artifact_dir)[0]
