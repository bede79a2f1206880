"""The GGUF tokenizer sidecar: a base read from a GGUF keeps that file's tokenizer fields.

`gguf_tokenizer.json` sits next to a checkpoint that came from a GGUF (vocabulary, merges,
token types, pre-tokenizer name, chat template, the source's tensor types). Fusion and
the multi-task directory copy it along; export writes the fields back verbatim, so the
exported file tokenizes exactly like the source.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from zflora.errors import ZFLoRAError, first_line

SIDECAR = "gguf_tokenizer.json"
SIDECAR_VERSION = 1


def write_sidecar(directory: str | os.PathLike, info: dict[str, Any]) -> None:
    sidecar = {
        "format_version": SIDECAR_VERSION,
        "source": Path(info["gguf_file"]).name,
        "sha256": info["sha256"],
        "fields": info["tokenizer_fields"],
        "tensor_types": info["tensor_types"],  # for export-gguf --dtype source
        "file_type": info["file_type"],
    }
    (Path(directory) / SIDECAR).write_text(json.dumps(sidecar) + "\n")


def read_sidecar(directory: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(directory) / SIDECAR
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ZFLoRAError(
            f"{path} is unreadable ({first_line(e)}); delete it or re-create the base"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("fields"), list):
        raise ZFLoRAError(f"{path} is not a zflora GGUF tokenizer sidecar; delete it or re-create the base")
    return data


def copy_sidecar(source_dir: str | os.PathLike, target_dir: str | os.PathLike) -> bool:
    """Carry the GGUF tokenizer sidecar from one checkpoint directory to another (fuse, swap)."""
    source = Path(source_dir) / SIDECAR
    if Path(source_dir).is_dir() and source.is_file():
        shutil.copyfile(source, Path(target_dir) / SIDECAR)
        return True
    return False


def sidecar_tokens(fields: list[dict[str, Any]]) -> list[str]:
    """The token list among a sidecar's fields (empty when it has none)."""
    for record in fields:
        if record["key"] == "tokenizer.ggml.tokens":
            return record["value"]
    return []


def write_fields(writer: Any, fields: list[dict[str, Any]]) -> None:
    """Write a sidecar's tokenizer fields into a GGUFWriter verbatim, with their recorded types."""
    from gguf import GGUFValueType

    for record in fields:
        sub = GGUFValueType[record["sub_type"]] if record.get("sub_type") else None
        writer.add_key_value(record["key"], record["value"], GGUFValueType[record["type"]], sub_type=sub)
