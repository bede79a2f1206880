"""Numerical faults, untrusted files and atomic writes (docs/reliability.md)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from conftest import randomize_adapter, tiny_model

import zflora
from zflora import ZFLoRAConfig, ZFLoRAError
from zflora.method.atomic import atomic_dir, atomic_file

ROOT = Path(__file__).resolve().parents[1]


def test_training_with_a_non_finite_loss_stops_and_names_the_step(model_dir, tmp_path):
    from zflora.harness.data import Example
    from zflora.harness.train import TrainSettings, train_method

    examples = [Example(str(i), "the cat", " sat on the mat", "x") for i in range(16)]
    settings = TrainSettings(learning_rates={"zflora": 0.9}, max_steps=40, batch_size=4, save_steps=100)
    # an absurd init scale and learning rate blow the loss up within a few steps
    from zflora.harness import methods

    original = methods.prepare

    def explosive(method, model, *args, **kwargs):
        zm = original(method, model, *args, **kwargs)
        with torch.no_grad():
            for tensor in zm.adapter_state_dict().values():
                tensor.fill_(1e30)
        return zm

    methods_prepare = pytest.MonkeyPatch()
    methods_prepare.setattr("zflora.harness.train.prepare", explosive)
    try:
        with pytest.raises(
            ZFLoRAError, match=r"training diverged: loss is (nan|inf) at step [12]; lower the learning rate"
        ):
            train_method(model_dir, examples, tmp_path / "adapter", "zflora", settings, progress=False)
    finally:
        methods_prepare.undo()
    assert not (tmp_path / "adapter").exists()  # no broken adapter saved


def test_swap_refuses_non_finite_adapter_and_leaves_the_model_untouched():
    zm = zflora.get_zflora_model(tiny_model(), ZFLoRAConfig(r=4))
    randomize_adapter(zm)
    fused = zm.fuse()
    before = {k: v.clone() for k, v in fused.state_dict().items()}
    broken = zm.adapter_weights()
    key = sorted(broken.tensors)[-1]
    broken.tensors = {**broken.tensors, key: broken.tensors[key].clone().fill_(float("inf"))}
    with pytest.raises(ZFLoRAError, match="non-finite values in .*; re-train or re-save it"):
        zflora.swap_adapter(fused, broken)
    assert all(torch.equal(before[k], v) for k, v in fused.state_dict().items())


def test_pickle_only_model_directory_is_refused(tmp_path):
    from zflora.method.loading import load_causal_lm

    model = tiny_model()
    model.save_pretrained(tmp_path / "m", safe_serialization=True)
    for f in (tmp_path / "m").glob("*.safetensors"):
        f.unlink()
    torch.save(model.state_dict(), tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(ZFLoRAError, match="only pickle weights .* convert them to safetensors"):
        load_causal_lm(tmp_path / "m")


def test_offline_hub_id_without_local_copy_is_one_clear_error(monkeypatch):
    from zflora.method.loading import load_causal_lm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ZFLoRAError, match=r"model 'meta-llama/Llama-3.2-1B' is not available offline.*hf download"
    ):
        load_causal_lm("meta-llama/Llama-3.2-1B")


def test_remote_code_is_off_by_default():
    import inspect

    from flows.params import ModelParams
    from zflora.method.loading import load_causal_lm, load_tokenizer

    assert inspect.signature(load_causal_lm).parameters["trust_remote_code"].default is False
    assert inspect.signature(load_tokenizer).parameters["trust_remote_code"].default is False
    assert ModelParams().trust_remote_code is False


def test_no_pickle_loading_anywhere_in_the_code():
    """Weights load through safetensors only; any torch.load must pass weights_only=True."""
    offenders = []
    for path in [*ROOT.glob("zflora/**/*.py"), *ROOT.glob("tasks/*.py"), *ROOT.glob("flows/*.py")]:
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in match.group(1):
                offenders.append(f"{path.name}: {match.group(0)}")
        if re.search(r"^\s*import pickle|^\s*from pickle", text, re.M):
            offenders.append(f"{path.name}: imports pickle")
    assert offenders == []


def test_atomic_dir_keeps_the_old_output_when_writing_fails(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left behind


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_outputs_get_the_umask_permissions_not_the_temporary_files(tmp_path, umask):
    """tempfile creates 0700 dirs and 0600 files; outputs (adapters, fused models, GGUF
    exports) are for other users and runtimes too, like any file that `open` creates."""
    old = os.umask(umask)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "a.txt").write_text("x")
        with atomic_file(tmp_path / "model.gguf", "wb") as handle:
            handle.write(b"x")
        plain = tmp_path / "plain"
        plain.mkdir()
        (plain / "b.txt").write_text("x")
    finally:
        os.umask(old)
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "out") == mode(plain) == 0o777 & ~umask
    assert mode(tmp_path / "model.gguf") == mode(plain / "b.txt") == 0o666 & ~umask
    assert mode(tmp_path / "out" / "a.txt") == 0o666 & ~umask


def test_atomic_file_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("{}")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as handle:
            handle.write('{"half": ')
            raise RuntimeError("killed")
    assert target.read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
