"""Settings: the one base class of every validated settings object (pydantic).

    class TrainSettings(Settings):
        batch_size: int = Field(16, gt=0, description="examples per step")

    TrainSettings(batch_size=0)
    # ZFLoRAError: TrainSettings.batch_size: Input should be greater than 0 (got 0)
    TrainSettings.from_dict({"batch_sise": 8}, source="params.yaml train")
    # ZFLoRAError: params.yaml train: unknown key(s) ['batch_sise']; known keys are [...]

The library's settings (ZFLoRAConfig, TinyBaseSettings, AdapterSettings, TrainSettings,
EvaluateSettings, ProfileSettings) derive from it, and the pipeline's params.yaml
sections embed or extend those same classes, so a field is declared, checked and
documented once. A bad value is one ZFLoRAError line naming the field and the fix.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from zflora.errors import ZFLoRAError


def describe_validation_error(error: ValidationError, source: str = "", prefix: str = "") -> str:
    """One line for the first problem pydantic found: '<source>: <prefix>.<field>: <message> (got <value>)'.

    A nested Settings object reports through its own __init__ (a SettingsError); its
    problem is described with the full key path ('train.epochz'), as if it were inline.
    """
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"])
    where = ".".join(part for part in (prefix, location) if part)
    nested = (first.get("ctx") or {}).get("error")
    if isinstance(nested, SettingsError):
        return describe_validation_error(nested.validation_error, source, where)
    lead = f"{source}: " if source else ""
    kind, message = first["type"], first["msg"].removeprefix("Value error, ")
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return f"{lead}unknown key {where!r}; check its spelling against the documented keys"
    if kind == "missing":
        return f"{lead}missing key {where!r}; add it"
    if kind == "value_error" and not location:
        return f"{lead}{where}: {message}" if where else f"{lead}{message}"
    got = repr(first.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    return f"{lead}{where}: {message} (got {got})"


class SettingsError(ZFLoRAError):
    """A bad settings value; keeps pydantic's error so an enclosing schema can name the full key."""

    def __init__(self, message: str, validation_error: ValidationError) -> None:
        super().__init__(message)
        self.validation_error = validation_error


class Settings(BaseModel):
    """A validated settings object: unknown keys and bad values raise ZFLoRAError (one line)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise SettingsError(describe_validation_error(e, prefix=type(self).__name__), e) from None

    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> Any:
        """Settings from a mapping (a params.yaml section, a JSON file); the message names `source`."""
        source = source or cls.__name__
        if not isinstance(data, dict):
            raise ZFLoRAError(
                f"{source}: expected a mapping of {cls.__name__} keys, got {type(data).__name__}"
            )
        unknown = sorted(set(data) - set(cls.model_fields))
        if unknown:
            raise ZFLoRAError(
                f"{source}: unknown key(s) {unknown}; known keys are {sorted(cls.model_fields)}"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise SettingsError(describe_validation_error(e, source), e) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (tuples become lists); `from_dict(to_dict())` gives an equal object."""
        return self.model_dump(mode="json")


def add_settings_arguments(parser: Any, cls: type[Settings], exclude: tuple[str, ...] = ()) -> None:
    """One `--field-name` option per field of `cls`: the settings class is the CLI (as in litgpt).

    Types, choices, defaults and help come from the field declarations; an option left out
    keeps the class default, so `settings_from_args` validates exactly what the user typed.
    """
    import argparse
    import types
    import typing

    for name, field in cls.model_fields.items():
        if name in exclude:
            continue
        annotation = field.annotation
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # X | None: the X
            annotation = args[0]
            args = list(typing.get_args(annotation))
        default = field.get_default(call_default_factory=True)
        shown = list(default) if isinstance(default, tuple) else default
        help_text = field.description or name
        help_text = (help_text if default is None else f"{help_text} (default: {shown})").replace("%", "%%")
        option: dict[str, Any] = {"default": None, "help": help_text, "dest": name}
        origin = typing.get_origin(annotation)
        if annotation is bool:
            option["action"] = argparse.BooleanOptionalAction
        elif origin is tuple:
            inner = typing.get_args(annotation)[0]
            inner = typing.get_args(inner)[0] if typing.get_origin(inner) is typing.Annotated else inner
            option.update(nargs="*", metavar="X", type=inner if inner in (int, float) else str)
        elif origin is typing.Literal:
            option["choices"] = typing.get_args(annotation)
        elif annotation in (int, float, str):
            option["type"] = annotation
        parser.add_argument("--" + name.replace("_", "-"), **option)


def settings_from_args(args: Any, cls: type[Settings], **fixed: Any) -> Any:
    """`cls` from the options `add_settings_arguments` registered (only those the user gave)."""
    given = {name: getattr(args, name) for name in cls.model_fields if getattr(args, name, None) is not None}
    return cls(**{**given, **fixed})
