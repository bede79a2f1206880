"""Every params key is read by the code of some stage, and dvc.yaml declares what each stage reads.

Observed, not assumed: the `reads` fixture runs every stage's flow body once, in this
process, on tiny params that set every key (RUN_PARAMS), with a ReadRecorder on
(tests/pipeline/params_reads.py): each read of a settings field, from the flow down to
torch, is recorded as the params key it stands for, with the value read, under the DVC
stage that ran it. Handing a whole section to a stage, validating it or logging it is not
a read. So a key that is validated but dropped on the way (the bug where `zflora_config`
did not pass `adapter.init_scale` on) is read by no stage, and a key whose readers all
see some other value (a hard-coded override, an object built apart from params) is
caught too: RUN_PARAMS gives most keys a value apart from their default for that reason.
Every stage that reads a key must list it under its `params` in dvc.yaml (GUARDS: reads
that only decide whether a stage refuses to run).

Limits: only the code paths RUN_PARAMS takes are observed (LoRA and zFLoRA, an embedded
task and a local copy of a real one, the base and a preset as profile targets, the
embedded base). A key passed on as a plain value (`dtype=...`) counts as read where it
leaves its settings object, whatever its receiver does with it.
`test_every_stage_handed_a_key_declares_it` covers paths the run does not take: what
`Params.stage_settings` hands a stage, whole sections included, must be declared for it.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from flows.params import Params, load_params
from zflora.harness.settings import AdapterSettings

from .params_reads import ReadRecorder, as_json, run_pipeline, stub_orchestration

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("base", "prepare", "tune", "train", "fuse", "evaluate", "evaluate-base", "profile", "report")
NOT_A_DEPENDENCY = {"tracking.experiment"}  # names where results are logged, not what they are
# reads that decide whether a stage refuses to run, not what it computes: (stage, key) -> why
GUARDS = {
    ("evaluate", "train.methods"): "check_method_listed refuses a method train.methods does not list; "
    "DVC builds the evaluate matrix from train.methods",
}

# Tiny sizes (the whole run takes seconds of training) and values apart from the defaults.
RUN_PARAMS = """
model:
  name: embedded
  short_name: reach
  dtype: float32
  trust_remote_code: false
  tiny: {vocab_size: 320, hidden_size: 32, num_layers: 1, num_heads: 2, num_kv_heads: 1,
         intermediate_size: 48, max_seq_len: 160, block_size: 24, steps: 2, batch_size: 3,
         learning_rate: 0.002, warmup_steps: 1, weight_decay: 0.02, seed: 3, corpus_docs: 40,
         tie_embeddings: false}
data: {tasks: [embedded-math], data_dir: DATA_DIR, train_size: 4, validation_size: 2,
       test_size: 2, seed: 4}
adapter: {r: 2, lora_alpha: 3.0, init_scale: 0.05}
train: {methods: [lora, zflora], seeds: 2, epochs: 2.0, max_steps: 1, batch_size: 2,
        grad_accum: 2, max_seq_len: 96, warmup_ratio: 0.1, weight_decay: 0.01,
        lr_scheduler: linear, seed: 5, save_steps: 7, logging_steps: 3,
        gradient_checkpointing: true}
tune: {learning_rates: {zflora: [0.01, 0.02]}, init_scales: {}, max_steps: 2,
       tasks: [embedded-math], per_task: false, jobs: 2}
fuse: {pad_multiple: 4, register_model: true}
evaluate: {batch_size: 3, max_new_tokens: 2, limit: 1}
profile: {targets: [base, tiny], layers: 1, r: 3, dtype: float32, device: cpu,
          batch_sizes: [2], prompt_lengths: [6], decode_tokens: 2, decode_context: 5,
          repeats: 1, warmup: 1, switch_repeats: 1, threads: 1, clock: cpu,
          pad_multiples: [8], variants: [base, lora, lora-merged, zflora, zflora-fused],
          memory: true, switch: true, seed: 6}
report: {title: reach run}
tracking: {experiment: reach, registry_prefix: reached, alias: newest}
"""
REAL_TASK = "gsm8k"  # prepared from a local copy, so the prepare stage reads data.data_dir


def leaves(data: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in data.items():
        path = f"{prefix}{key}"
        keys += leaves(value, path + ".") if isinstance(value, dict) and value else [path]
    return keys


def value_at(data: Any, key: str) -> Any:
    for part in key.split(".") if key else []:
        data = data[part]
    return data


def declared_params() -> dict[str, list[str]]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        out[name] = [p if isinstance(p, str) else next(iter(p)) for p in body.get("params", [])]
    return out


def is_declared(key: str, declared: list[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in declared)


def committed_data() -> dict[str, Any]:
    """The committed params.yaml with every default filled in, as a params file would say it."""
    data = load_params(ROOT / "params.yaml").model_dump(mode="json")
    data["profile"].pop("preset"), data["profile"].pop("model")  # profile.targets names them
    data["train"].pop("learning_rates")  # the tune stage chooses them (tune.learning_rates)
    return data


def schema_keys(cls: type[BaseModel] = Params, prefix: str = "") -> list[str]:
    """Every key of the params schema; a dict of data (tune.learning_rates) is one key."""
    keys = []
    for name, field in cls.model_fields.items():
        kind = field.annotation
        is_section = isinstance(kind, type) and issubclass(kind, BaseModel)
        keys += schema_keys(kind, f"{prefix}{name}.") if is_section else [f"{prefix}{name}"]
    return keys


COMMITTED = committed_data()
NOT_PARAMS = {"profile.preset", "profile.model", "train.learning_rates"}  # see committed_data
KEYS = [k for k in schema_keys() if k not in NOT_A_DEPENDENCY | NOT_PARAMS]


def write_real_task(folder: Path, rows: int = 8) -> None:
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        lines = [
            json.dumps({"question": f"{split} {i}: what is {i} + {i + 1}?", "answer": f"#### {2 * i + 1}"})
            for i in range(rows)
        ]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def reads(tmp_path_factory) -> tuple[dict[str, dict[str, set[str]]], dict[str, Any]]:
    """({stage: {key: values read}}, the run's params): every stage of RUN_PARAMS run once, recorded."""
    import torch

    workspace = tmp_path_factory.mktemp("reach")
    write_real_task(workspace / "local-data" / REAL_TASK)
    params_path = workspace / "params.yaml"
    params_path.write_text(RUN_PARAMS.replace("DATA_DIR", str(workspace / "local-data")))
    with pytest.MonkeyPatch.context() as monkeypatch:
        stub_orchestration(monkeypatch)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ReadRecorder() as recorder:
                run_pipeline(workspace, params_path, recorder, extra_prepare=(REAL_TASK,))
        finally:
            torch.set_num_threads(threads)
    return recorder.values, load_params(params_path).model_dump(mode="json")


def readers(key: str, values: dict[str, dict[str, set[str]]]) -> dict[str, set[str]]:
    """{stage: values read} for `key`: reads of the key itself or of the whole dict holding it."""
    found: dict[str, set[str]] = {}
    for stage, read in values.items():
        for name, seen in read.items():
            if key == name or key.startswith(name + "."):
                rest = key[len(name) + 1 :]
                for value in seen:
                    with contextlib.suppress(KeyError, TypeError):  # a dict without that entry
                        entry = as_json(value_at(json.loads(value), rest))
                        found.setdefault(stage, set()).add(entry)
    return found


def test_the_walk_covers_every_committed_key():
    committed = leaves(yaml.safe_load((ROOT / "params.yaml").read_text()))
    uncovered = [c for c in committed if not any(c == k or c.startswith(k + ".") for k in KEYS)]
    assert set(uncovered) <= NOT_A_DEPENDENCY


def test_the_run_sets_every_key():
    params = yaml.safe_load(RUN_PARAMS)
    missing = [k for k in KEYS if not _has(params, k)]
    assert not missing, f"RUN_PARAMS leaves {missing} at their defaults: give them a value apart from it"


def _has(data: dict, key: str) -> bool:
    try:
        value_at(data, key)
    except (KeyError, TypeError):
        head, _, _ = key.rpartition(".")
        return bool(head) and _has(data, head)  # a whole dict given (tune.learning_rates)
    return True


@pytest.mark.parametrize("key", KEYS)
def test_every_key_is_read_by_a_stage_with_its_value(key, reads):
    values, params = reads
    found = readers(key, values)
    assert found, f"{key} is read by no stage: it is validated but nothing uses it"
    expected = as_json(value_at(params, key))
    assert any(expected in seen for seen in found.values()), (
        f"{key}: the stages {sorted(found)} read it, but only as {sorted(set().union(*found.values()))}, "
        f"never as the params value {expected}: they read an override or an object not built from params"
    )


@pytest.mark.parametrize("key", KEYS)
def test_every_stage_that_reads_a_key_declares_it(key, reads):
    values, _ = reads
    declared = declared_params()
    for stage in readers(key, values):
        if (stage, key) in GUARDS:
            continue
        assert is_declared(key, declared[stage]), (
            f"stage {stage} reads {key} but dvc.yaml does not list it under {stage}.params: "
            "editing it would keep stale results"
        )


# another valid value for keys whose type alone does not give one
OTHER_VALUE: dict[str, Any] = {
    "model.name": "models/other-base",
    "model.short_name": "other",
    "model.dtype": "bfloat16",
    "model.tiny.hidden_size": 256,
    "model.tiny.num_heads": 8,
    "model.tiny.num_kv_heads": 1,
    "train.weight_decay": 0.01,
    "data.tasks": ["embedded-math", "embedded-summary"],  # keeps tune.tasks a subset
    "data.data_dir": "data/local",
    "train.methods": ["zflora"],
    "tune.learning_rates": {"zflora": [0.02, 0.04]},
    "tune.init_scales": {"zflora": [0.02, 0.08]},
    "tune.tasks": ["embedded-math"],
    "train.lr_scheduler": "linear",
    "profile.targets": ["base"],
    "profile.dtype": "bfloat16",
    "profile.device": "cuda",
    "profile.clock": "cpu",
    "profile.variants": ["base", "zflora-fused"],
    "profile.pad_multiples": [64],
    "profile.batch_sizes": [2],
    "profile.prompt_lengths": [16],
}


def other_value(key: str, value: Any) -> Any:
    if key in OTHER_VALUE:
        return OTHER_VALUE[key]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 0.5
    if isinstance(value, list) and value and all(isinstance(v, float) for v in value):
        return [v * 0.5 for v in value]
    if value is None:
        return 7
    if isinstance(value, str):
        return value + " (changed)"
    raise AssertionError(f"no other value known for {key} = {value!r}: add one to OTHER_VALUE")


def with_value(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy
    *sections, last = key.split(".")
    node = data
    for section in sections:
        node = node.setdefault(section, {})
    node[last] = value
    if key == "profile.clock":  # cpu time needs the cpu device, its default
        node["device"] = "cpu"
    return data


def handed(params: Params) -> dict[str, str]:
    def dump(value: Any) -> Any:
        return value.model_dump(mode="json") if hasattr(value, "model_dump") else value

    return {
        stage: json.dumps({k: dump(v) for k, v in params.stage_settings(stage).items()}, sort_keys=True)
        for stage in STAGES
    }


@pytest.mark.parametrize("key", KEYS)
def test_every_stage_handed_a_key_declares_it(key):
    """What `Params.stage_settings` hands a stage, whole sections included, is declared for it:
    changing the key changes what the stage is handed, so dvc.yaml must list it there."""
    changed = with_value(COMMITTED, key, other_value(key, value_at(COMMITTED, key)))
    before, after = handed(Params.model_validate(COMMITTED)), handed(Params.model_validate(changed))
    declared = declared_params()
    for stage in (s for s in STAGES if before[s] != after[s]):
        assert is_declared(key, declared[stage]), (
            f"stage {stage} is handed {key} but dvc.yaml does not list it under {stage}.params"
        )


def test_the_recorder_sees_reads_and_only_reads():
    """The instrument itself: attribute and dumped-dict reads count; validation, dumps and a
    section handed on whole do not; values are the ones read."""
    data = yaml.safe_load(RUN_PARAMS.replace("DATA_DIR", "local-data"))
    with ReadRecorder() as recorder:
        recorder.stage = "s"
        params = Params.model_validate(data)  # validators read every field: no use
        adapter = params.adapter  # a section: no use
        logged = params.train.to_dict()  # dumped for logging: no use
        assert json.dumps(logged)
        adapter.init_scale  # noqa: B018 - an attribute read
        params.model.model_dump()["tiny"]["hidden_size"]  # a dumped dict's read
        params.data.model_dump().get("data_dir")
        params.tune.model_dump()["learning_rates"]  # a whole data dict
        params.train.with_learning_rate("zflora", 0.01).batch_size  # noqa: B018 - rebuilt from the section
        AdapterSettings().lora_alpha  # noqa: B018 - built from the defaults: no params value
    assert recorder.values["s"] == {
        "adapter.init_scale": {"0.05"},
        "model.tiny.hidden_size": {"32"},
        "data.data_dir": {'"local-data"'},
        "tune.learning_rates": {'{"zflora": [0.01, 0.02]}'},
        "train.batch_size": {"2"},
    }
    assert readers("tune.learning_rates.zflora", recorder.values) == {"s": {"[0.01, 0.02]"}}
    adapter.r  # noqa: B018 - after the recorder: nothing recorded, nothing patched
    assert "adapter.r" not in recorder.values["s"]
    assert "__getattribute__" not in type(adapter).__dict__
