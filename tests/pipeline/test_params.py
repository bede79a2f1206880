"""params.yaml and every shipped params file validate; a bad key or value is one line naming it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.params import ParamsError, load_params, parse_params

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = [ROOT / "params.yaml", *sorted((ROOT / "configs").glob("*.yaml"))]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_params_file_validates(path):
    params = load_params(path)
    assert params.data.tasks and params.train.methods
    for target in params.profile.targets:
        if target != "base":
            params.profile.settings(target, None, params.adapter.r)  # the profiler accepts it too


def default() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def with_change(path: str, value) -> dict:
    data = default()
    *parents, leaf = path.split(".")
    node = data
    for key in parents:
        node = node[key]
    node[leaf] = value
    return data


@pytest.mark.parametrize(
    "path,value,message",
    [
        ("train.epochz", 2, r"unknown key 'train.epochz'"),
        ("adapter.r", 0, r"adapter.r: Input should be greater than 0"),
        ("adapter.r", "sixteen", r"adapter.r: Input should be a valid integer"),
        ("data.tasks", ["embedded-math", "gsm9k"], r"data.tasks: unknown task\(s\) \['gsm9k'\]"),
        ("data.tasks", [], r"data.tasks: List should have at least 1 item"),
        ("train.methods", ["lora", "qlora"], r"train.methods: unknown method\(s\) \['qlora'\]"),
        ("train.methods", ["base", "lora"], r"train.methods: 'base' trains nothing: remove it"),
        ("train.learning_rates", {"lora": 0.1}, r"learning rates are chosen by the tune stage"),
        ("tune.learning_rates", {"lora": [0.1, 5]}, r"lora: list one or more learning rates in \(0, 1\)"),
        ("tune.learning_rates", {"base": [0.1]}, r"untrainable method 'base'"),
        ("tune.tasks", ["boolq"], r"tune.tasks \[.boolq.\] are not in data.tasks"),
        ("train.seeds", 0, r"train.seeds: Input should be greater than 0"),
        (
            "model.tiny",
            {"hidden_size": 130, "num_heads": 4},
            r"model.tiny: hidden_size 130 must split",
        ),
        ("model.tiny", {"hiden_size": 64}, r"unknown key 'model.tiny.hiden_size'"),
        ("profile.targets", ["llama-9b"], r"unknown profile target\(s\) \['llama-9b'\]"),
        ("model.dtype", "float8", r"model.dtype: Input should be 'float32', 'bfloat16' or 'float16'"),
    ],
)
def test_bad_params_are_one_clear_line(path, value, message):
    with pytest.raises(ParamsError, match=message) as info:
        parse_params(with_change(path, value), "params.yaml")
    assert "\n" not in str(info.value)


def test_missing_section_and_bad_yaml(tmp_path):
    data = default()
    del data["train"]
    with pytest.raises(ParamsError, match="missing key 'train'"):
        parse_params(data)
    bad = tmp_path / "params.yaml"
    bad.write_text("model:\n  name: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML at line"):
        load_params(bad)
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_a_stage_refuses_bad_params_before_starting_anything(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(with_change("adapter.r", -3)))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows",
            "train",
            "--task",
            "embedded-math",
            "--method",
            "zflora",
            "--params",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 2
    assert out.stderr.strip() == f"zflora: error: {bad}: adapter.r: Input should be greater than 0 (got -3)"
    assert not (tmp_path / "artifacts").exists() and not (tmp_path / ".prefect").exists()


@pytest.mark.parametrize(
    "name,label",
    [
        ("embedded", "tiny"),
        ("meta-llama/Llama-3.2-1B", "llama-3.2-1b"),
        ("/models/SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct"),
        ("smollm2-135m-instruct", "smollm2-135m-instruct"),
    ],
)
def test_registered_names_use_the_base_model_name(name, label):
    from flows.params import ModelParams

    assert ModelParams(name=name).label == label
