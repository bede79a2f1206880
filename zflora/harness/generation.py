"""Model references for `zflora generate`, and the generation helpers the harness uses.

A model reference is a local directory, a hub id, or a URI such as
`models:/zflora-tiny-embedded-math@latest`. URI schemes are resolved by plugins
registered under the `zflora.model_resolvers` entry-point group (the pipeline's
`tasks` package registers MLflow's `models:/` and `runs:/`), so the library itself
never imports a tracking server's client.

Prompt rendering and batched greedy generation live in the method layer
(`zflora.method.generation`, which `MultiTaskModel` uses too) and are re-exported here,
so `from zflora.harness.generation import generate_text` keeps working.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from torch import nn

from zflora.errors import ZFLoRAError
from zflora.method.generation import (
    context_length,
    encode_prompts,
    generate_text,
    has_chat_template,
    render_answer,
    render_prompt,
    stop_ids,
)

__all__ = [
    "RESOLVER_GROUP",
    "context_length",
    "encode_prompts",
    "generate_text",
    "has_chat_template",
    "load_for_generation",
    "render_answer",
    "render_prompt",
    "resolve_model_ref",
    "stop_ids",
]

RESOLVER_GROUP = "zflora.model_resolvers"


def resolve_model_ref(ref: str) -> str:
    """A local path for `ref`: URIs go through the registered resolver for their scheme."""
    if ":/" not in ref or Path(ref).exists():
        return ref
    scheme = ref.split(":", 1)[0]
    resolvers = {ep.name: ep for ep in entry_points(group=RESOLVER_GROUP)}
    if scheme not in resolvers:
        known = sorted(resolvers) or ["none installed"]
        raise ZFLoRAError(
            f"no resolver for {scheme}:/ model URIs (known: {', '.join(known)}); install the project with "
            "`pip install -e .` so the pipeline's MLflow resolver is registered, or pass a local directory"
        )
    return str(resolvers[scheme].load()(ref))


def load_for_generation(
    ref: str, adapter: str | None = None, dtype: str | None = None, trust_remote_code: bool = False
) -> tuple[nn.Module, Any]:
    """(model, tokenizer) for a model reference, with an optional zFLoRA adapter applied.

    On a fused model the adapter is swapped in place; on a plain base it runs in the
    unfused training form.
    """
    from zflora.method.fusion import META_KEY, swap_adapter
    from zflora.method.loading import load_causal_lm

    path = resolve_model_ref(ref)
    model, tokenizer = load_causal_lm(path, dtype=dtype, trust_remote_code=trust_remote_code)
    if tokenizer is None:
        raise ZFLoRAError(f"model {ref!r} has no tokenizer files; save the tokenizer next to the model")
    if adapter is not None:
        if isinstance(getattr(model.config, META_KEY, None), dict):
            swap_adapter(model, adapter)
        else:
            from zflora.method.model import ZFLoRAModel

            model = ZFLoRAModel.from_pretrained(model, adapter)
    model.eval()
    return model, tokenizer
