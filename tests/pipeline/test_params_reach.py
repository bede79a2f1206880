"""Every params key reaches the code that uses it, and dvc.yaml declares what each stage reads.

For each key of the validated params (the committed params.yaml plus every default), the
test changes the value to another valid one and resolves each stage's settings
(`Params.stage_settings`, which the train and evaluate flows hand to their tasks as they
are). At least one stage must see a difference (else the key is dead: the bug where
`adapter.init_scale` was validated but never reached training), and every stage that
sees it must list the key (or its section) under `params` in dvc.yaml (else editing it
would keep stale cached results).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.params import Params, load_params

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("base", "prepare", "tune", "train", "fuse", "evaluate", "evaluate-base", "profile", "report")
NOT_A_DEPENDENCY = {"tracking.experiment"}  # names where results are logged, not what they are
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


def leaves(data: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in data.items():
        path = f"{prefix}{key}"
        keys += leaves(value, path + ".") if isinstance(value, dict) and value else [path]
    return keys


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


def resolved(params: Params) -> dict[str, str]:
    def dump(value: Any) -> Any:
        return value.model_dump(mode="json") if hasattr(value, "model_dump") else value

    return {
        stage: json.dumps({k: dump(v) for k, v in params.stage_settings(stage).items()}, sort_keys=True)
        for stage in STAGES
    }


def declared_params() -> dict[str, list[str]]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        out[name] = [p if isinstance(p, str) else next(iter(p)) for p in body.get("params", [])]
    return out


BASELINE = load_params(ROOT / "params.yaml")
DATA = BASELINE.model_dump(mode="json")
for section in ("profile",):  # the profile section names its targets, never a preset or model
    DATA[section].pop("preset"), DATA[section].pop("model")
DATA["train"].pop("learning_rates")  # the tune stage chooses them (tune.learning_rates)
KEYS = [k for k in leaves(DATA) if k not in NOT_A_DEPENDENCY]


def test_the_walk_covers_every_committed_key():
    committed = leaves(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert set(committed) - NOT_A_DEPENDENCY <= set(KEYS)


@pytest.mark.parametrize("key", KEYS)
def test_every_key_reaches_a_stage_that_declares_it(key):
    value = DATA
    for part in key.split("."):
        value = value[part]
    changed = Params.model_validate(with_value(DATA, key, other_value(key, value)))
    before, after = resolved(BASELINE), resolved(changed)
    readers = [stage for stage in STAGES if before[stage] != after[stage]]
    assert readers, f"{key} reaches no stage: changing it changes nothing that a stage uses"
    declared = declared_params()
    for stage in readers:
        assert any(key == p or key.startswith(p + ".") for p in declared[stage]), (
            f"stage {stage} reads {key} but dvc.yaml does not list it under {stage}.params"
        )
