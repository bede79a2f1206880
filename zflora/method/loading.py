"""Load causal LMs and tokenizers from a local directory, a hub id or a GGUF file, safely.

Weights load only through safetensors (`use_safetensors=True`: no pickle) and
`trust_remote_code` stays off unless the caller turns it on. Every failure a user can
cause (missing directory, no weights, offline hub id) becomes one ZFLoRAError that says
what is missing and how to provide it. A path ending in `.gguf` or a GGUF preset name
(`smollm2-135m-instruct`) is dequantized into a plain model (zflora.method.gguf.read).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from zflora.errors import ZFLoRAError, first_line

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    if dtype not in DTYPES:
        raise ZFLoRAError(f"unknown dtype {dtype!r}; use one of {[*DTYPES, 'auto']}")
    return DTYPES[dtype]


def looks_like_path(name: str) -> bool:
    """A local path rather than a hub id ('name' or 'org/name')."""
    return Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") >= 2


def check_model_dir(path: str | Path) -> Path:
    """A directory that holds a transformers model with safetensors weights, or a clear error."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ZFLoRAError(
            f"model path {str(path)!r} does not exist; pass a directory written by save_pretrained"
        )
    if not path.is_dir():
        raise ZFLoRAError(f"model path {str(path)!r} is a file; pass the directory that holds config.json")
    if not (path / "config.json").is_file():
        raise ZFLoRAError(
            f"model directory {str(path)!r} has no config.json; pass a directory written by save_pretrained"
        )
    has_safetensors = any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file()
    if not has_safetensors:
        pickled = any(path.glob("*.bin")) or any(path.glob("*.pt"))
        hint = (
            "it holds only pickle weights (*.bin), which zflora does not load; convert them to safetensors"
            if pickled
            else "it has no *.safetensors weights"
        )
        raise ZFLoRAError(f"model directory {str(path)!r}: {hint}")
    return path


def load_causal_lm(
    name_or_path: str | Path,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    with_tokenizer: bool = True,
) -> tuple[nn.Module, Any]:
    """(model, tokenizer or None) from a local directory, a hub id, a .gguf file or a GGUF preset;
    ZFLoRAError when unavailable."""
    from transformers import AutoModelForCausalLM

    from zflora.method.gguf.presets import is_gguf_ref
    from zflora.method.gguf.read import load_gguf

    name = str(name_or_path)
    if is_gguf_ref(name):
        model, tokenizer, _ = load_gguf(name, dtype=dtype, device=device, with_tokenizer=with_tokenizer)
        return model, tokenizer
    local = looks_like_path(name)
    if local:
        name = str(check_model_dir(name))
    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": bool(trust_remote_code)}
    torch_dtype = resolve_dtype(dtype)
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    try:
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except OSError as e:
        if local:
            raise ZFLoRAError(
                f"cannot load model from {name!r} ({first_line(e)}); re-save it with save_pretrained"
            ) from None
        raise ZFLoRAError(
            f"model {name!r} is not available offline and the hub cannot be reached ({first_line(e)}); "
            "download it on a connected machine (`hf download " + name + "`) and pass the local directory, "
            "or set HF_HOME to a cache that holds it"
        ) from None
    except ValueError as e:
        raise ZFLoRAError(f"cannot load {name!r} as a causal LM: {first_line(e)}") from None
    if device is not None:
        model = model.to(device)
    model.eval()
    tokenizer = load_tokenizer(name, trust_remote_code) if with_tokenizer else None
    return model, tokenizer


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool = False) -> Any:
    """The tokenizer stored with a model (left padding, pad = eos when it has none), or None."""
    from transformers import AutoTokenizer

    name = str(name_or_path)
    if Path(name).is_dir() and not any((Path(name) / f).exists() for f in _TOKENIZER_FILES):
        return None
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=bool(trust_remote_code))
    except (OSError, ValueError) as e:
        raise ZFLoRAError(
            f"cannot load the tokenizer of {name!r} ({first_line(e)}); save it next to the model"
        ) from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer
