"""Which params keys the pipeline's code reads: the instrument of tests/pipeline/test_params_reach.py.

    with ReadRecorder() as reads:
        reads.stage = "train"
        ...                                    # run the train stage's code
    reads.values["train"]["adapter.init_scale"]  # the values it read for that key (JSON)

While a recorder is active, every class a params section is, embeds or extends (Params,
ModelParams, TinyBaseSettings, TrainParams and its base TrainSettings, ...) records each read
of one of its fields (`adapter.init_scale` as an attribute) as the params key it stands for,
with the value read, under the current stage. A `model_dump` (or `to_dict`) of such an
object returns a dict that records its reads the same way (`data["train_size"]`,
`data.get("data_dir")`), because some stages hand their tasks plain dicts.

Not reads: validation (constructing or validating an object runs validators that look at
every field), dumping (`model_dump`, logging a whole section), iterating or unpacking a
dumped dict (`TrainSettings(**fields)`: what the new object's readers read is recorded
instead), reading a field that holds a section (`params.model` is no use of
`model.name`), and reading a field that was not set explicitly on its object (pydantic's
`model_fields_set`): an object the code builds from the library's defaults
(`AdapterSettings()`) carries no params value. A params file that sets every key gives
every object built from it explicit fields, and rebuilt or copied objects keep them. A
key is recorded where code takes it out of a settings object: a value passed on as a
plain argument (`dtype=...`) counts as read there, whatever the receiver then does with it.

`run_pipeline(workspace, params_path, recorder)` runs every stage's flow body in this
process, in pipeline order, under its DVC stage name: the real code from the flow down
to torch, with only Prefect's orchestration, MLflow logging and the model registry
replaced. None of those replacements is handed a settings object, so none can hide a read.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import types
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from flows.params import Params

_PATCHED = ("__getattribute__", "__init__", "__setattr__", "model_validate", "model_dump")


def _model_class(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def section_prefixes() -> dict[type[BaseModel], str]:
    """Every class of the params schema and the key prefix its fields stand for.

    A section's library base class (TrainSettings under TrainParams) gets the section's
    prefix too: the flows rebuild it from the section (`with_learning_rate`) and hand that on.
    """
    prefixes: dict[type[BaseModel], str] = {}

    def walk(cls: type[BaseModel], prefix: str) -> None:
        for base in cls.__mro__:
            if _model_class(base) and base.model_fields:
                if prefixes.setdefault(base, prefix) != prefix:
                    raise AssertionError(f"{base.__name__} stands for both {prefixes[base]} and {prefix}")
        for name, field in cls.model_fields.items():
            if sub := _model_class(field.annotation):
                walk(sub, f"{prefix}{name}.")

    walk(Params, "")
    return prefixes


def as_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)  # tuples and lists alike


class RecordingDict(dict):
    """A dumped settings object that records the keys read from it (`d[key]`, `d.get(key)`)."""

    def __init__(self, data: dict, source: BaseModel, prefix: str, recorder: ReadRecorder) -> None:
        def section(key: str) -> BaseModel | None:
            value = source.__dict__.get(key)
            return value if isinstance(value, BaseModel) and isinstance(data[key], dict) else None

        super().__init__(
            {
                key: RecordingDict(value, sub, f"{prefix}{key}.", recorder)
                if (sub := section(key)) is not None
                else value
                for key, value in data.items()
            }
        )
        self._explicit = set(source.__pydantic_fields_set__)
        self._prefix, self._recorder = prefix, recorder

    def __getitem__(self, key: Any) -> Any:
        value = super().__getitem__(key)
        if not isinstance(value, RecordingDict) and key in self._explicit:
            self._recorder.record(f"{self._prefix}{key}", value)
        return value

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default


class ReadRecorder:
    """Records, per stage, every params key that code reads and the values it read (module doc)."""

    def __init__(self) -> None:
        self.stage: str | None = None
        self.values: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        self.prefixes = section_prefixes()
        self._paused = 0
        self._saved: list[tuple[type, str, bool, Any]] = []

    def record(self, key: str, value: Any) -> None:
        if self.stage is not None and not self._paused and not isinstance(value, BaseModel):
            self.values[self.stage][key].add(as_json(value))

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def _pausing(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self.paused():
                return fn(*args, **kwargs)

        return wrapper

    def _hooks(self, cls: type[BaseModel], prefix: str) -> dict[str, Any]:
        recorder, fields = self, frozenset(cls.model_fields)
        original_dump = cls.model_dump

        def __getattribute__(obj: Any, name: str) -> Any:
            value = object.__getattribute__(obj, name)
            if name in fields and name in object.__getattribute__(obj, "__pydantic_fields_set__"):
                recorder.record(recorder.prefixes.get(type(obj), prefix) + name, value)
            return value

        def model_dump(obj: Any, *args: Any, **kwargs: Any) -> Any:
            with recorder.paused():
                data = original_dump(obj, *args, **kwargs)
            return RecordingDict(data, obj, recorder.prefixes.get(type(obj), prefix), recorder)

        return {
            "__getattribute__": __getattribute__,
            "__init__": self._pausing(cls.__init__),
            "__setattr__": self._pausing(cls.__setattr__),  # validate_assignment runs validators
            "model_validate": classmethod(self._pausing(cls.model_validate.__func__)),
            "model_dump": model_dump,
        }

    def __enter__(self) -> ReadRecorder:
        for cls, prefix in self.prefixes.items():
            for name, hook in self._hooks(cls, prefix).items():
                self._saved.append((cls, name, name in cls.__dict__, cls.__dict__.get(name)))
                setattr(cls, name, hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        for cls, name, had, value in reversed(self._saved):
            if had:
                setattr(cls, name, value)
            else:
                delattr(cls, name)
        self._saved.clear()


# ------------------------------------------------------- the stages, in this process


@contextlib.contextmanager
def _no_tracking(run_id: str = "reach") -> Iterator[Any]:
    yield types.SimpleNamespace(info=types.SimpleNamespace(run_id=run_id))


def _registered(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"uri": "models:/stub@latest", "version": 1, "tasks": []}


def stub_orchestration(monkeypatch: Any) -> None:
    """Prefect tasks run as plain functions, MLflow logs nothing, the registry registers nothing."""
    import mlflow
    from prefect import Task

    import flows.fuse
    from flows import base, evaluate, fuse, prepare, profile, report, train, tune

    for module in (base, prepare, tune, train, fuse, evaluate, profile, report):
        for name, value in vars(module).items():
            if isinstance(value, Task):
                monkeypatch.setattr(module, name, value.fn)
        monkeypatch.setattr(module, "stage_run", lambda *args, **kwargs: _no_tracking())
    monkeypatch.setattr(flows.fuse, "register", _registered)
    monkeypatch.setattr(flows.fuse, "register_multitask", _registered)
    for name in ("log_artifact", "log_artifacts", "log_metric", "log_metrics", "log_params"):
        monkeypatch.setattr(mlflow, name, lambda *args, **kwargs: None)


def pipeline_runs(params: Params, extra_prepare: tuple[str, ...] = ()) -> list[tuple[str, str, dict]]:
    """(DVC stage, flow module, options) of every stage run of `params`, in pipeline order."""
    tasks, methods = params.data.tasks, params.train.methods
    runs = [("base", "base", {})]
    runs += [("prepare", "prepare", {"task": t}) for t in (*tasks, *extra_prepare)]
    runs += [("tune", "tune", {"method": m}) for m in methods]
    runs += [("train", "train", {"task": t, "method": m}) for t in tasks for m in methods]
    if "zflora" in methods:
        runs += [("fuse", "fuse", {"task": t}) for t in tasks]
    runs += [("evaluate", "evaluate", {"task": t, "method": m}) for t in tasks for m in methods]
    runs += [("evaluate-base", "evaluate", {"task": t, "method": "base"}) for t in tasks]
    return runs + [("profile", "profile", {}), ("report", "report", {})]


def run_pipeline(
    workspace: Path, params_path: Path, recorder: ReadRecorder, extra_prepare: tuple[str, ...] = ()
) -> None:
    """Every stage's flow body on `params_path`, in `workspace`, recorded under its DVC stage name."""
    import importlib

    from prefect.states import State

    from flows.params import load_params

    with recorder.paused():
        runs = pipeline_runs(load_params(params_path), extra_prepare)
    cwd = Path.cwd()
    os.chdir(workspace)
    try:
        for stage, module, options in runs:
            flow = getattr(importlib.import_module(f"flows.{module}"), f"{module}_flow")
            recorder.stage = stage
            result = flow.fn(**options, params_path=str(params_path))
            recorder.stage = None
            if isinstance(result, State):
                raise AssertionError(f"stage {stage} {options} failed: {result.message}")
    finally:
        recorder.stage = None
        os.chdir(cwd)
