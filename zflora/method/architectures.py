"""Which modules of a model family are zFLoRA readers, writers, norms and stream ends.

One table, like PEFT's target-module mapping: adding a family with the Llama block
layout is one entry. Anything else is refused with a message naming the supported list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from zflora.errors import ZFLoRAError

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Layout:
    """Module paths of a Llama-layout decoder, relative to the *ForCausalLM model."""

    embed: str = "model.embed_tokens"
    layers: str = "model.layers"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    # relative to one decoder layer
    norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")
    readers: tuple[tuple[str, str], ...] = (
        ("attn", "self_attn.q_proj"),
        ("attn", "self_attn.k_proj"),
        ("attn", "self_attn.v_proj"),
        ("mlp", "mlp.gate_proj"),
        ("mlp", "mlp.up_proj"),
    )
    writers: tuple[tuple[str, str], ...] = (
        ("attn", "self_attn.o_proj"),
        ("mlp", "mlp.down_proj"),
    )


LLAMA_LAYOUT = Layout()

# model_type -> layout. Llama, Mistral and Qwen2 share the block layout (Qwen2 adds q/k/v
# bias, which sits on the output side of a reader and needs nothing special).
LAYOUTS: dict[str, Layout] = {
    "llama": LLAMA_LAYOUT,
    "mistral": LLAMA_LAYOUT,
    "qwen2": LLAMA_LAYOUT,
}
SUPPORTED = tuple(sorted(LAYOUTS))


def layout_for(model: nn.Module) -> Layout:
    """The layout of a transformers causal LM, or a ZFLoRAError naming the supported families."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    name = type(model).__name__
    if model_type not in LAYOUTS:
        raise ZFLoRAError(
            f"unsupported architecture {name} (model_type={model_type!r}); zflora supports the "
            f"Llama block layout: {', '.join(SUPPORTED)}"
        )
    if not name.endswith("ForCausalLM"):
        raise ZFLoRAError(
            f"zflora adapts causal LMs; got {name}. Load the model with AutoModelForCausalLM instead"
        )
    layout = LAYOUTS[model_type]
    for path in (layout.embed, layout.layers, layout.final_norm, layout.lm_head):
        if get_submodule(model, path, required=False) is None:
            raise ZFLoRAError(
                f"{name} has no module {path!r}; it does not follow the {model_type} layout zflora expects"
            )
    return layout


def get_submodule(root: nn.Module, path: str, required: bool = True) -> nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:
        if required:
            raise
        return None


def set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, child, module)


def adapter_shapes(
    model: nn.Module, blocks: tuple[str, ...], r: int, d: int, tied: bool
) -> dict[str, tuple[int, int]]:
    """The one description of an adapter: its tensor keys ('<base module path>.<P|Q|B|A>') and shapes.

    `model` is the base, its ZFLoRAModel-wrapped form or a fused model: a reader's output
    width and a writer's input width are the same in all three, so the shapes are too.
    Wrapping, saving, loading, fusing, swapping and exporting all use this.
    """
    layout = layout_for(model)
    shapes = {f"{layout.embed}.P": (d, r)}
    if not tied:
        shapes[f"{layout.lm_head}.Q"] = (d, r)
    for index in range(len(model.get_submodule(layout.layers))):
        prefix = f"{layout.layers}.{index}"
        for block, path in layout.readers:
            if block in blocks:
                shapes[f"{prefix}.{path}.B"] = (model.get_submodule(f"{prefix}.{path}").weight.shape[0], r)
        for block, path in layout.writers:
            if block in blocks:
                shapes[f"{prefix}.{path}.A"] = (r, model.get_submodule(f"{prefix}.{path}").weight.shape[1])
    return shapes
