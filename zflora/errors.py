"""The one exception users see: a ValueError whose message names the culprit and the fix."""

from __future__ import annotations

import dataclasses
from typing import Any


class ZFLoRAError(ValueError):
    """A problem the user caused (bad argument, wrong file, mismatched adapter).

    The message says what is wrong and what to do instead; the CLI prints it as one
    line and exits non-zero, without a traceback.
    """


def check_fields(cls: type, data: Any, source: str, *, kind: str = "a mapping", noun: str = "field") -> None:
    """Refuse `data` unless it is a dict whose keys are fields of the dataclass `cls`.

    The shared first step of the settings classes' `from_dict`: the message names
    `source`, the unknown keys and the known ones.
    """
    if not isinstance(data, dict):
        raise ZFLoRAError(f"{source}: expected {kind} of {cls.__name__} fields, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ZFLoRAError(f"{source}: unknown {noun}(s) {unknown}; known {noun}s are {sorted(known)}")
