"""Read a GGUF base: dequantize it into a plain transformers model, or once into a directory.

    model, tokenizer, info = load_gguf("smollm2-135m-instruct")  # a preset, or a path to a .gguf file
    info = dequantize_to_directory("model.gguf", "artifacts/base")  # safetensors + tokenizer + sha256

Reading goes through transformers' GGUF loader (it dequantizes and undoes llama.cpp's
q/k permutation), then the weights move into a plain model of the same class, so the
result saves and trains like any checkpoint. The file's tokenizer fields are kept in a
sidecar (`zflora.method.gguf.sidecar`) for a later export.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zflora.errors import ZFLoRAError, first_line
from zflora.method.gguf.presets import resolve_gguf
from zflora.method.gguf.sidecar import write_sidecar

# architectures whose GGUF files zflora reads (llama.cpp writes Mistral models as "llama")
READ_ARCHITECTURES = ("llama", "qwen2")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _reader(path: Path) -> Any:
    """A GGUFReader over `path`, or a ZFLoRAError naming the file (truncated, not a GGUF)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ZFLoRAError(
            "reading GGUF files needs the gguf package; install it with `pip install gguf`"
        ) from None
    try:
        return GGUFReader(path)
    except Exception as e:  # the reader raises ValueError, struct.error, IndexError... on a damaged file
        raise ZFLoRAError(
            f"cannot read GGUF file {str(path)!r} ({first_line(e)}): it is truncated or not a GGUF file; "
            "download it again"
        ) from None


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def read_tokenizer_fields(reader: Any) -> list[dict[str, Any]]:
    """Every `tokenizer.*` field of a GGUF file, as JSON-able records (key, type, sub_type, value)."""
    records = []
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        types = [t.name for t in field.types]
        records.append(
            {
                "key": key,
                "type": types[0],
                "sub_type": types[1] if len(types) > 1 else None,
                "value": field.contents(),
            }
        )
    return records


def load_gguf(
    name: str | os.PathLike,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    with_tokenizer: bool = True,
) -> tuple[nn.Module, Any, dict[str, Any]]:
    """(plain model, tokenizer or None, info) for a GGUF preset or file, dequantized.

    `info` holds the file's path, sha256 and tokenizer fields (for the sidecar).
    """
    from zflora.method.loading import resolve_dtype

    path = resolve_gguf(name)
    reader = _reader(path)
    architecture = _field(reader, "general.architecture")
    if architecture not in READ_ARCHITECTURES:
        raise ZFLoRAError(
            f"GGUF file {str(path)!r} holds architecture {architecture!r}, which zflora does not support; "
            f"supported GGUF architectures: {', '.join(READ_ARCHITECTURES)} (Mistral files say llama)"
        )
    info = {
        "gguf_file": str(path.resolve()),
        "sha256": file_sha256(path),
        "architecture": architecture,
        "gguf_name": _field(reader, "general.name"),
        "tokenizer_fields": read_tokenizer_fields(reader),
        "tensor_types": {t.name: t.tensor_type.name for t in reader.tensors},
        "file_type": _field(reader, "general.file_type"),
    }
    del reader
    torch_dtype = resolve_dtype(dtype) or torch.float32
    model = _dequantized_model(path, torch_dtype)
    if device is not None:
        model = model.to(device)
    model.eval()
    tokenizer = _gguf_tokenizer(path) if with_tokenizer else None
    return model, tokenizer, info


def _dequantized_model(path: Path, dtype: torch.dtype) -> nn.Module:
    """transformers' GGUF load, moved into a plain model (the loaded one keeps a GGUF quantizer
    that refuses save_pretrained)."""
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the loader logs every metadata key it skips
    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    except Exception as e:  # numpy reshape errors, unsupported quantization types, missing tensors...
        raise ZFLoRAError(
            f"cannot load GGUF file {str(path)!r} as a causal LM ({first_line(e)}); "
            "check that the file is complete and of a supported architecture"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    with no_init_weights():
        plain = type(loaded)._from_config(config, dtype=dtype)
    plain.tie_weights()  # no_init_weights also skips tying
    source = dict(loaded.named_parameters())
    with torch.no_grad():
        for param_name, param in plain.named_parameters():
            if param_name not in source:
                raise ZFLoRAError(
                    f"GGUF file {str(path)!r} has no weight for {param_name}; the file is incomplete"
                )
            param.copy_(source[param_name])
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    del loaded
    return plain.eval()


def _gguf_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:
        raise ZFLoRAError(
            f"cannot build the tokenizer of GGUF file {str(path)!r} ({first_line(e)})"
        ) from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def dequantize_to_directory(
    name: str | os.PathLike, out_dir: str | os.PathLike, dtype: str | torch.dtype | None = "float32"
) -> dict[str, Any]:
    """Dequantize a GGUF preset or file once into `out_dir`: safetensors, tokenizer, sidecar.

    Returns the file's path, sha256 and the model's shape; written atomically.
    """
    from zflora.method.atomic import atomic_dir

    model, tokenizer, info = load_gguf(name, dtype=dtype)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_sidecar(tmp, info)
    return {
        "gguf_file": info["gguf_file"],
        "gguf_sha256": info["sha256"],
        "gguf_architecture": info["architecture"],
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
    }
