"""Small file helpers shared by the tasks: JSON / JSONL in and out, atomically."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from zflora.errors import ZFLoRAError
from zflora.harness.data.example import Example
from zflora.method.atomic import atomic_file


def write_json(path: str | Path, data: Any) -> Path:
    with atomic_file(path) as handle:
        handle.write(json.dumps(data, indent=2, default=str) + "\n")
    return Path(path)


def read_json(path: str | Path, what: str = "file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise ZFLoRAError(f"{what} {str(path)!r} is missing; run the stage that produces it (dvc repro)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ZFLoRAError(
            f"{what} {str(path)!r} is not valid JSON ({e}); rerun the stage that produces it"
        ) from None


def base_model_ref(base_dir: str | Path) -> str:
    """What to load for the base: the directory itself (embedded, GGUF) or the recorded hub id / path
    (the base stage's manifest, base.json)."""
    base_dir = Path(base_dir)
    if (base_dir / "config.json").is_file():
        return str(base_dir)
    return read_json(base_dir / "base.json", "base model manifest")["name"]


def write_examples(path: Path, examples: list[Example]) -> None:
    with open(path, "w") as handle:
        for example in examples:
            handle.write(json.dumps(dataclasses.asdict(example)) + "\n")


def read_examples(path: str | Path) -> list[Example]:
    path = Path(path)
    if not path.is_file():
        raise ZFLoRAError(
            f"examples file {str(path)!r} is missing; run the prepare stage (dvc repro prepare)"
        )
    examples = []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                examples.append(Example(**json.loads(line)))
            except (json.JSONDecodeError, TypeError) as e:
                raise ZFLoRAError(
                    f"{path}:{number} is not an example row ({e}); rerun the prepare stage"
                ) from None
    return examples
