"""Disk-to-disk fusion: base directory + adapter directory -> a standard fused checkpoint.

Used by `zflora fuse` and the pipeline's `fuse` stage. The output directory (model,
tokenizer, generation config) is written atomically and reloads with stock
`AutoModelForCausalLM.from_pretrained`. The base may also be a .gguf file or a GGUF
preset; a base that came from a GGUF passes its tokenizer sidecar on to the fused
checkpoint, so `zflora export-gguf` writes that file's tokenizer back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zflora.method.adapter_file import read_adapter
from zflora.method.atomic import atomic_dir
from zflora.method.fusion import fuse_adapter
from zflora.method.gguf.presets import is_gguf_ref
from zflora.method.gguf.read import load_gguf
from zflora.method.gguf.sidecar import copy_sidecar, write_sidecar
from zflora.method.loading import load_causal_lm
from zflora.method.model import ZFLoRAModel


def fuse_to_directory(
    base: str | Path,
    adapter: str | Path,
    out_dir: str | Path,
    dtype: str | None = None,
    pad_multiple: int = 1,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Fuse `adapter` into `base` and save the result to `out_dir`; returns a summary."""
    weights = read_adapter(adapter)  # validate the adapter before loading a large base
    gguf_info = None
    if is_gguf_ref(base):
        model, tokenizer, gguf_info = load_gguf(base, dtype=dtype)
    else:
        model, tokenizer = load_causal_lm(base, dtype=dtype, trust_remote_code=trust_remote_code)
    zm = ZFLoRAModel.from_pretrained(model, weights)
    fused = fuse_adapter(zm, weights.name, multiple=pad_multiple)
    with atomic_dir(out_dir) as tmp:
        fused.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if gguf_info is not None:
            write_sidecar(tmp, gguf_info)
        else:
            copy_sidecar(base, tmp)
    meta = fused.config.zflora
    return {
        "adapter": weights.name,
        "r": weights.config.r,
        "blocks": list(weights.config.blocks),
        "architecture": type(fused).__name__,
        "base_hidden_size": meta["base_hidden_size"],
        "fused_hidden_size": fused.config.hidden_size,
        "padding_channels": meta["width"] - weights.config.r,
        "parameters": sum(p.numel() for p in fused.parameters()),
        "out_dir": str(out_dir),
    }
