"""params.yaml: every knob of the pipeline, one section per stage, validated by a typed schema.

    from flows.params import load_params
    params = load_params("params.yaml")      # ParamsError (one line) on a bad key or value

Sections embed the library's own validated settings (zflora.harness.tinybase.TinyBaseSettings)
so a value is checked by the same code that uses it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from zflora.errors import ZFLoRAError
from zflora.harness.data import TASKS
from zflora.harness.methods import METHODS
from zflora.harness.tinybase import TinyBaseSettings

DEFAULT_PARAMS = "params.yaml"
EMBEDDED = "embedded"


class ParamsError(ZFLoRAError):
    """A bad params file: the message names the key and what to write instead."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelParams(Section):
    """`base` stage: which base model the adapters are trained on."""

    name: str = Field(
        EMBEDDED, description="'embedded' (train the tiny base here) or an HF id / local directory"
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
        return "tiny" if self.name == EMBEDDED else Path(self.name.rstrip("/")).name.lower()


class DataParams(Section):
    """`prepare` stage: tasks, sizes, and where local copies of real datasets live."""

    tasks: list[str] = Field(min_length=1)
    data_dir: str | None = Field(
        None, description="folder with one sub-folder per task holding local data files"
    )
    train_size: int = Field(2000, gt=0)
    test_size: int = Field(120, gt=0)
    seed: int = 0

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: list[str]) -> list[str]:
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; `zflora tasks` lists the known ones")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"duplicate task in {tasks}")
        return tasks


class AdapterParams(Section):
    """Adapter shape shared by LoRA and zFLoRA (equal rank for a fair comparison)."""

    r: int = Field(16, gt=0)
    lora_alpha: float | None = Field(None, gt=0, description="LoRA alpha (default 2r)")
    init_scale: float = Field(0.02, gt=0, lt=10, description="zFLoRA readers' init std")


class TrainParams(Section):
    """`train` stage (matrix task x method); `base` trains nothing and records the base it is."""

    methods: list[str] = Field(min_length=1)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="> 0 overrides epochs")
    batch_size: int = Field(16, gt=0)
    grad_accum: int = Field(1, gt=0)
    max_seq_len: int = Field(256, gt=0)
    learning_rates: dict[str, float] = Field(default_factory=dict, description="per-method overrides")
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    seed: int = 0
    save_steps: int = Field(50, gt=0, description="checkpoint period: a killed run resumes from here")
    logging_steps: int = Field(10, gt=0)
    gradient_checkpointing: bool = False

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: list[str]) -> list[str]:
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
        if len(set(methods)) != len(methods):
            raise ValueError(f"duplicate method in {methods}")
        return methods

    @field_validator("learning_rates")
    @classmethod
    def _rates(cls, rates: dict[str, float]) -> dict[str, float]:
        for method, rate in rates.items():
            if method not in METHODS or method == "base":
                raise ValueError(f"learning rate for unknown or untrainable method {method!r}")
            if not 0 < rate < 1:
                raise ValueError(f"learning rate of {method} must be in (0, 1), got {rate}")
        return rates


class FuseParams(Section):
    """`fuse` stage: zFLoRA export and registry."""

    pad_multiple: int = Field(1, gt=0, description="pad the fused width to a multiple of this")
    register_model: bool = Field(True, description="register each fused model in the MLflow model registry")


class EvaluateParams(Section):
    """`evaluate` stage (matrix task x method)."""

    batch_size: int = Field(32, gt=0)
    max_new_tokens: int | None = Field(None, gt=0, description="default: the task's own budget")
    limit: int | None = Field(None, gt=0, description="evaluate only the first n test examples")


class ProfileParams(Section):
    """`profile` stage: latency of base / LoRA / merged LoRA / zFLoRA unfused / fused."""

    targets: list[str] = Field(
        default_factory=lambda: ["base"],
        min_length=1,
        description="'base' (the pipeline's base model) and/or preset names",
    )
    layers: int | None = Field(None, gt=0, description="decoder layers kept for presets (quick CPU runs)")
    r: int | None = Field(None, gt=0, description="default: adapter.r")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 8], min_length=1)
    prompt_lengths: list[int] = Field(default_factory=lambda: [32, 128], min_length=1)
    decode_tokens: int = Field(16, gt=0)
    repeats: int = Field(10, gt=0)
    warmup: int = Field(2, ge=0)
    switch_repeats: int = Field(20, gt=0)
    threads: int | None = Field(None, gt=0)
    clock: Literal["wall", "cpu"] = "wall"
    pad_multiples: list[int] = Field(default_factory=list)

    @field_validator("targets")
    @classmethod
    def _targets(cls, targets: list[str]) -> list[str]:
        from zflora.harness.profiling import PRESETS

        unknown = [t for t in targets if t != "base" and t not in PRESETS]
        if unknown:
            raise ValueError(
                f"unknown profile target(s) {unknown}; use 'base' or a preset: {sorted(PRESETS)}"
            )
        return targets

    def settings(self, target: str, model_dir: str | None, r: int) -> Any:
        """zflora.harness.profiling.ProfileSettings for one target (validated there as well)."""
        from zflora.harness.profiling import ProfileSettings

        fields = self.model_dump(exclude={"targets", "layers", "r"})
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
    adapter: AdapterParams = Field(default_factory=AdapterParams)
    train: TrainParams
    fuse: FuseParams = Field(default_factory=FuseParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    profile: ProfileParams = Field(default_factory=ProfileParams)
    report: ReportParams = Field(default_factory=ReportParams)
    tracking: TrackingParams = Field(default_factory=TrackingParams)

    def registered_model_name(self, task: str) -> str:
        return f"{self.tracking.registry_prefix}-{self.model.label}-{task}"


def _describe(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "(top level)"
    kind, message = first["type"], first["msg"]
    if kind == "extra_forbidden" or kind == "unexpected_keyword_argument":
        return f"{source}: unknown key {location!r}; check its spelling against the documented keys (docs/pipeline.md)"
    if kind == "missing":
        return f"{source}: missing key {location!r}; add it (see the committed params.yaml)"
    message = message.removeprefix("Value error, ")
    got = repr(first.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    return f"{source}: {location}: {message} (got {got})"


def parse_params(data: Any, source: str = DEFAULT_PARAMS) -> Params:
    if not isinstance(data, dict):
        raise ParamsError(
            f"{source}: expected a mapping of sections (model, data, train, ...), got {type(data).__name__}"
        )
    try:
        return Params.model_validate(data)
    except ValidationError as e:
        raise ParamsError(_describe(e, source)) from None


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
