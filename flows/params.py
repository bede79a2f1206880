"""params.yaml: every knob of the pipeline, one section per stage, validated by a typed schema.

    from flows.params import load_params
    params = load_params("params.yaml")      # ParamsError (one line) on a bad key or value

Sections are, embed or extend the library's own settings classes (AdapterSettings,
TrainSettings, EvaluateSettings, TinyBaseSettings: zflora/harness/settings.py;
ProfileSettings: zflora/harness/profiling/settings.py), so a key is declared, checked and
documented once. Those modules import pydantic and the standard library only: checking
params never imports torch, and a stage depends only on the code it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from zflora.errors import ZFLoRAError
from zflora.harness.data.names import TASK_NAMES
from zflora.harness.profiling.settings import PRESETS, ProfileSettings
from zflora.harness.settings import (
    DEFAULT_LEARNING_RATES,
    TRAINED_METHODS,
    ZFLORA_BLOCKS,
    AdapterSettings,
    EvaluateSettings,
    TinyBaseSettings,
    TrainSettings,
)
from zflora.settings import describe_validation_error

DEFAULT_PARAMS = "params.yaml"
EMBEDDED = "embedded"


class ParamsError(ZFLoRAError):
    """A bad params file: the message names the key and what to write instead."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelParams(Section):
    """`base` stage: which base model the adapters are trained on."""

    name: str = Field(
        EMBEDDED,
        description="'embedded' (train the tiny base here), an HF id, a local directory, a .gguf file "
        "or the packaged preset 'smollm2-135m-instruct'",
    )
    short_name: str | None = Field(
        None, description="name used in registered models; default 'tiny' or the id's last part"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = Field(
        False, description="run model code from the hub (off: it is arbitrary code)"
    )
    tiny: TinyBaseSettings = Field(
        default_factory=TinyBaseSettings, description="the embedded base (name: embedded)"
    )

    @property
    def label(self) -> str:
        if self.short_name:
            return self.short_name
        if self.name == EMBEDDED:
            return "tiny"
        name = Path(self.name.rstrip("/")).name
        if name.lower().endswith(".gguf"):  # SmolLM2-135M-Instruct.Q4_1.gguf -> smollm2-135m-instruct
            name = name[: -len(".gguf")].split(".")[0]
        return name.lower()


class DataParams(Section):
    """`prepare` stage: tasks, sizes, and where local copies of real datasets live."""

    tasks: list[str] = Field(min_length=1)
    data_dir: str | None = Field(
        None, description="folder with one sub-folder per task holding local data files"
    )
    train_size: int = Field(2000, gt=0)
    validation_size: int = Field(
        0,
        ge=0,
        description="examples held out from training (embedded tasks: their own validation split) for learning-rate selection",
    )
    test_size: int = Field(120, gt=0)
    seed: int = 0

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: list[str]) -> list[str]:
        unknown = [t for t in tasks if t not in TASK_NAMES]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; `zflora tasks` lists the known ones")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"duplicate task in {tasks}")
        return tasks


class TrainParams(TrainSettings):
    """`train` stage (matrix task x method): the library's TrainSettings plus the methods to
    train and how many seeds. The base model trains nothing: it is always evaluated (the
    evaluate-base stages) and reported beside them. Learning rates come from the `tune`
    stage (tune.learning_rates), not from here."""

    model_config = ConfigDict(frozen=True)
    methods: list[str] = Field(
        min_length=1, description="methods to train and evaluate (the base model is evaluated anyway)"
    )
    seeds: int = Field(
        1,
        gt=0,
        description="train each method with seeds seed, seed+1, ...; scores are reported as the mean "
        "and range; the first seed's model is the one fused and registered",
    )

    @model_validator(mode="before")
    @classmethod
    def _rates_come_from_tune(cls, data: Any) -> Any:
        if isinstance(data, dict) and "learning_rates" in data:
            raise ValueError(
                "learning rates are chosen by the tune stage: list candidates under "
                "tune.learning_rates (one value: that rate, untuned)"
            )
        return data

    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]

    def with_learning_rate(self, method: str, rate: float | None, seed: int | None = None) -> TrainSettings:
        """The library's TrainSettings for one run: this section with `method`'s selected rate."""
        fields = self.model_dump(exclude={"methods", "seeds", "learning_rates"})
        fields["learning_rates"] = {} if rate is None else {method: rate}
        if seed is not None:
            fields["seed"] = seed
        return TrainSettings(**fields)

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: list[str]) -> list[str]:
        if "base" in methods:
            raise ValueError(
                "'base' trains nothing: remove it (the base model is evaluated by the evaluate-base "
                "stages and reported beside the trained methods)"
            )
        unknown = [m for m in methods if m not in TRAINED_METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {list(TRAINED_METHODS)}")
        if len(set(methods)) != len(methods):
            raise ValueError(f"duplicate method in {methods}")
        return methods


class TuneParams(Section):
    """`tune` stage (one per method): learning-rate selection on the validation split
    (data.validation_size examples held out from training; the test split is never
    read). Each candidate trains on every tuned task and is scored on its validation split;
    each task then trains at its own best candidate (per_task), or every task at the best
    mean (per_task: false). Tasks left out of tune.tasks train at the best mean and are
    reported as untuned, outside the averages."""

    learning_rates: dict[str, list[float]] = Field(
        default_factory=dict,
        description="candidates per method; a method without a list trains at its default rate "
        + ", ".join(f"{m} {lr:g}" for m, lr in DEFAULT_LEARNING_RATES.items())
        + " (untuned); one value: that rate, untuned",
    )
    init_scales: dict[str, list[float]] = Field(
        default_factory=dict,
        description="zFLoRA methods: candidates for adapter.init_scale (the readers' initial std), "
        "crossed with the learning rates; a method without a list uses adapter.init_scale",
    )
    max_steps: int | None = Field(
        None, gt=0, description="steps per candidate (default: the train section's budget)"
    )
    tasks: list[str] | None = Field(None, min_length=1, description="tasks to tune on (default: data.tasks)")
    per_task: bool = Field(
        True,
        description="each tuned task trains at its own best candidate (false: every task at the best mean)",
    )
    jobs: int = Field(
        1,
        ge=1,
        le=64,
        description="trials (candidate x task) run at once in worker processes, the torch threads split "
        "between them: faster for small models on CPU; 1 on a single GPU",
    )

    @field_validator("learning_rates")
    @classmethod
    def _candidates(cls, rates: dict[str, list[float]]) -> dict[str, list[float]]:
        for method, candidates in rates.items():
            if method not in TRAINED_METHODS:
                raise ValueError(
                    f"learning rates for unknown or untrainable method {method!r}; "
                    f"trainable methods are {list(TRAINED_METHODS)}"
                )
            if not candidates or not all(0 < rate < 1 for rate in candidates):
                raise ValueError(f"{method}: list one or more learning rates in (0, 1), got {candidates}")
            if len(set(candidates)) != len(candidates):
                raise ValueError(f"{method}: duplicate learning rate in {candidates}")
        return rates

    @field_validator("init_scales")
    @classmethod
    def _init_scales(cls, scales: dict[str, list[float]]) -> dict[str, list[float]]:
        for method, candidates in scales.items():
            if method not in ZFLORA_BLOCKS:
                raise ValueError(
                    f"init scales for {method!r}, which has no zFLoRA readers; zFLoRA methods are {list(ZFLORA_BLOCKS)}"
                )
            if (
                not candidates
                or not all(0 < scale < 10 for scale in candidates)
                or len(set(candidates)) != len(candidates)
            ):
                raise ValueError(f"{method}: list distinct init scales in (0, 10), got {candidates}")
        return scales

    def candidates(self, method: str) -> list[float]:
        return self.learning_rates.get(method) or [DEFAULT_LEARNING_RATES[method]]


class FuseParams(Section):
    """`fuse` stage: zFLoRA export and registry."""

    pad_multiple: int = Field(1, gt=0, description="pad the fused width to a multiple of this")
    register_model: bool = Field(True, description="register each fused model in the MLflow model registry")


class ProfileParams(ProfileSettings):
    """`profile` stage: the library's ProfileSettings, run once per target.

    A target is 'base' (the pipeline's base model) or a preset shape; `layers` applies to
    presets only, and `r` defaults to adapter.r.
    """

    model_config = ConfigDict(frozen=True)
    targets: list[str] = Field(
        default_factory=lambda: ["base"],
        min_length=1,
        description="'base' (the pipeline's base model) and/or preset names",
    )
    r: int | None = Field(None, gt=0, description="adapter rank (default: adapter.r)")

    @model_validator(mode="before")
    @classmethod
    def _targets_not_sources(cls, data: Any) -> Any:
        if isinstance(data, dict) and {"preset", "model"} & set(data):
            raise ValueError(
                "set what to profile with profile.targets ('base' or preset names), not preset/model"
            )
        return data

    @field_validator("targets")
    @classmethod
    def _targets(cls, targets: list[str]) -> list[str]:
        unknown = [t for t in targets if t != "base" and t not in PRESETS]
        if unknown:
            raise ValueError(
                f"unknown profile target(s) {unknown}; use 'base' or a preset: {sorted(PRESETS)}"
            )
        return targets

    def settings(self, target: str, model_dir: str | None, r: int) -> ProfileSettings:
        """The ProfileSettings of one target."""
        fields = self.model_dump(exclude={"targets", "preset", "model", "layers", "r"})
        where = (
            {"model": model_dir, "preset": None}
            if target == "base"
            else {"preset": target, "layers": self.layers}
        )
        return ProfileSettings(**fields, **where, r=self.r or r)


class ReportParams(Section):
    """`report` stage: tables and plots under reports/."""

    title: str = "zflora: zFLoRA vs LoRA vs full fine-tuning"


class TrackingParams(Section):
    """MLflow experiment and model-registry names (MLFLOW_TRACKING_URI picks the server)."""

    experiment: str = "zflora"
    registry_prefix: str = "zflora"
    alias: str = "latest"


class Params(Section):
    model: ModelParams = Field(default_factory=ModelParams)
    data: DataParams
    adapter: AdapterSettings = Field(default_factory=AdapterSettings)
    train: TrainParams
    tune: TuneParams = Field(default_factory=TuneParams)
    fuse: FuseParams = Field(default_factory=FuseParams)
    evaluate: EvaluateSettings = Field(default_factory=EvaluateSettings)
    profile: ProfileParams = Field(default_factory=ProfileParams)
    report: ReportParams = Field(default_factory=ReportParams)
    tracking: TrackingParams = Field(default_factory=TrackingParams)

    @model_validator(mode="after")
    def _tuning_has_data(self) -> Params:
        outside = [t for t in self.tune.tasks or [] if t not in self.data.tasks]
        if outside:
            raise ValueError(f"tune.tasks {outside} are not in data.tasks {self.data.tasks}")
        tuned = [
            m
            for m in self.train.methods
            if len(self.tune.learning_rates.get(m, [])) * len(self.tune.init_scales.get(m, [None])) > 1
        ]
        if tuned and not self.data.validation_size:
            raise ValueError(
                f"tune.learning_rates lists several candidates for {tuned}, which needs a validation "
                "split: set data.validation_size > 0"
            )
        return self

    def stage_settings(self, stage: str) -> dict[str, Any]:
        """What a stage reads from params, by DVC stage name: the train, tune and evaluate flows
        hand exactly this to their tasks. Only the asked stage's settings are built, so a
        stage reads no other stage's keys (tests/pipeline/test_params_reach.py records the
        keys each stage reads, and checks that dvc.yaml declares them for that stage).
        `tracking.experiment` only names where every stage logs, so it is not a dependency.
        """

        def half() -> dict[str, Any]:
            return {"dtype": self.model.dtype, "trust_remote_code": self.model.trust_remote_code}

        def tune() -> dict[str, Any]:
            tune_train = self.train.model_copy(
                update={"max_steps": self.tune.max_steps or self.train.max_steps, "seeds": 1}
            )
            return {
                "tune": self.tune.model_copy(update={"tasks": self.tune.tasks or self.data.tasks}),
                "train": tune_train,
                "adapter": self.adapter,
                "evaluate": self.evaluate,
                **half(),
            }

        stages: dict[str, Any] = {
            "base": lambda: {"model": self.model},
            "prepare": lambda: {"data": self.data},
            "tune": tune,
            "train": lambda: {
                "train": self.train,
                "adapter": self.adapter,
                "per_task": self.tune.per_task,
                **half(),
            },
            "fuse": lambda: {"fuse": self.fuse, "tracking": self.tracking, "model": self.model},
            "evaluate": lambda: {"evaluate": self.evaluate, **half()},
            "evaluate-base": lambda: {"evaluate": self.evaluate, **half()},
            "profile": lambda: {"profile": self.profile, "r": self.profile.r or self.adapter.r},
            "report": lambda: {
                "report": self.report,
                "tasks": self.data.tasks,
                "methods": self.train.methods,
                "targets": self.profile.targets,
                "tuned_tasks": self.tune.tasks or self.data.tasks,
                "per_task": self.tune.per_task,
            },
        }
        return stages[stage]()

    def registered_model_name(self, task: str) -> str:
        return f"{self.tracking.registry_prefix}-{self.model.label}-{task}"


def parse_params(data: Any, source: str = DEFAULT_PARAMS) -> Params:
    if not isinstance(data, dict):
        raise ParamsError(
            f"{source}: expected a mapping of sections (model, data, train, ...), got {type(data).__name__}"
        )
    try:
        return Params.model_validate(data)
    except ValidationError as e:
        raise ParamsError(describe_validation_error(e, source)) from None


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    """Read and validate a params file; ParamsError (one line) names the bad key."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file {str(path)!r} not found; run from the project root or pass --params")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(
            f"{path}: not valid YAML{where} ({getattr(e, 'problem', e)}); fix the syntax"
        ) from None
    return parse_params(data, str(path))
