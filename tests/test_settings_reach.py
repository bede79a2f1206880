"""Settings reach the code that uses them: the drift bugs of the old hand-copied schemas.

`adapter.init_scale` used to be validated and documented but dropped before training;
`model.dtype: float16` used to train in float32; a killed run resumed onto a base that
had been replaced in the same folder. Each has a test here.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model

from zflora.harness import methods
from zflora.harness.data import Example
from zflora.harness.train import TrainSettings, train_method

EXAMPLES = [Example(str(i), f"the cat {i}", " sat on the mat", "x") for i in range(8)]


@pytest.mark.parametrize("init_scale", [0.005, 0.5])
def test_init_scale_sets_the_readers_init(init_scale):
    model = methods.prepare(
        "zflora", tiny_model("llama"), methods.AdapterSettings(r=8, init_scale=init_scale), seed=0
    )
    readers = torch.cat([v.flatten() for k, v in model.adapter_state_dict().items() if k.endswith(".B")])
    assert readers.std().item() == pytest.approx(init_scale, rel=0.1)
    writers = [v for k, v in model.adapter_state_dict().items() if k.endswith((".A", ".P"))]
    assert all(torch.count_nonzero(w) == 0 for w in writers)  # step 0 equals the base


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_training_runs_in_the_dtype_the_params_say(model_dir, tmp_path, dtype, monkeypatch):
    seen = {}
    original = methods.prepare

    def spy(method, model, *args, **kwargs):
        prepared = original(method, model, *args, **kwargs)
        seen["base"] = next(model.parameters()).dtype
        seen["adapter"] = {v.dtype for v in prepared.adapter_state_dict().values()}
        return prepared

    monkeypatch.setattr("zflora.harness.train.prepare", spy)
    settings = TrainSettings(max_steps=2, batch_size=4, save_steps=100, logging_steps=1)
    metrics = train_method(
        model_dir, EXAMPLES, tmp_path / "adapter", "zflora", settings, dtype=dtype, progress=False
    )
    assert seen == {"base": getattr(torch, dtype), "adapter": {torch.float32}}
    assert metrics["dtype"] == dtype and metrics["steps"] == 2
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_a_checkpoint_resumes_only_onto_the_same_base(model_dir, tmp_path):
    """The resume key is the base's fingerprint, not its path: a base replaced in place starts over."""
    from zflora.harness.train import prepare_work_dir, run_fingerprint
    from zflora.method.fingerprint import base_fingerprint

    parts = {"method": "zflora", "train": TrainSettings().to_dict()}
    key = run_fingerprint(base_fingerprint(tiny_model("llama", seed=0)), EXAMPLES, parts)
    work = tmp_path / "work"
    assert prepare_work_dir(work, key) is None
    (work / "checkpoint-5").mkdir()
    (work / "checkpoint-5" / "trainer_state.json").write_text(json.dumps({"global_step": 5}))
    assert prepare_work_dir(work, key) == work / "checkpoint-5"  # same run: resume
    replaced = run_fingerprint(base_fingerprint(tiny_model("llama", seed=1)), EXAMPLES, parts)
    assert replaced != key
    assert prepare_work_dir(work, replaced) is None  # another base at the same path: start over
    assert not (work / "checkpoint-5").exists()


@pytest.mark.parametrize("state", ["", '{"global_st', "[]"], ids=["empty", "cut-short", "not-a-state"])
def test_a_checkpoint_cut_off_while_its_state_was_written_is_not_resumed(tmp_path, state):
    """A kill can land while trainer_state.json is written: resume from the checkpoint before it."""
    from zflora.harness.train import prepare_work_dir

    work = tmp_path / "work"
    assert prepare_work_dir(work, "run") is None
    for step, text in ((5, json.dumps({"global_step": 5})), (10, state)):
        (work / f"checkpoint-{step}").mkdir()
        (work / f"checkpoint-{step}" / "trainer_state.json").write_text(text)
    assert prepare_work_dir(work, "run") == work / "checkpoint-5"
    assert not (work / "checkpoint-10").exists()  # the broken one is removed, not trained over
