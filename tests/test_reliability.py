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


@pytest.fixture
def from_pretrained_calls(monkeypatch):
    """The keyword arguments of every AutoModelForCausalLM / AutoTokenizer.from_pretrained call."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    calls: list[tuple[str, dict]] = []
    for cls in (AutoModelForCausalLM, AutoTokenizer):
        real = cls.from_pretrained

        def spy(*args, _real=real, _name=cls.__name__, **kwargs):
            calls.append((_name, kwargs))
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    return calls


def test_remote_code_is_off_unless_asked(model_dir, from_pretrained_calls, capsys):
    from flows.params import ModelParams
    from zflora.cli import main
    from zflora.harness.tinybase import resolve_base_model
    from zflora.method.loading import load_causal_lm

    def remote_code_flags() -> dict[str, bool]:
        """{class: trust_remote_code} of the calls since the last look ("absent" where not passed)."""
        seen = {name: kwargs.get("trust_remote_code", "absent") for name, kwargs in from_pretrained_calls}
        from_pretrained_calls.clear()
        return seen

    off = {"AutoModelForCausalLM": False, "AutoTokenizer": False}
    load_causal_lm(model_dir)
    assert remote_code_flags() == off
    resolve_base_model(str(model_dir))
    assert remote_code_flags() == off
    prompt = ["generate", "--model", str(model_dir), "--prompt", "hi", "--max-new-tokens", "1"]
    assert main(prompt) == 0
    assert remote_code_flags() == off
    # asked for: passed on, from Python and from the CLI
    load_causal_lm(model_dir, trust_remote_code=True)
    assert remote_code_flags() == {"AutoModelForCausalLM": True, "AutoTokenizer": True}
    assert main([*prompt, "--trust-remote-code"]) == 0
    assert remote_code_flags() == {"AutoModelForCausalLM": True, "AutoTokenizer": True}
    capsys.readouterr()
    assert ModelParams().trust_remote_code is False  # the pipeline's default (params.yaml)


PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve", "marshal"}
SCANNED = ("zflora", "flows", "tasks", "benchmarks")


def pickle_offences(source: str) -> list[str]:
    """What in `source` could unpickle: an import of a pickle module, a `torch.load` without
    `weights_only=True` (or one imported or held under another name), `allow_pickle=True`."""
    import ast

    tree = ast.parse(source)
    torch_names = {"torch"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            torch_names |= {a.asname for a in node.names if a.name == "torch" and a.asname}
    offences, safe = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            offences += [
                f"line {node.lineno}: import {a.name}"
                for a in node.names
                if a.name.split(".")[0] in PICKLE_MODULES
            ]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in PICKLE_MODULES:
                offences.append(f"line {node.lineno}: from {node.module} import ...")
            if node.module.split(".")[0] == "torch" and any(a.name == "load" for a in node.names):
                offences.append(f"line {node.lineno}: from {node.module} import load")
        elif isinstance(node, ast.Call):
            keywords = {k.arg: k.value for k in node.keywords}
            weights_only = keywords.get("weights_only")
            if isinstance(weights_only, ast.Constant) and weights_only.value is True:
                safe.add(id(node.func))
            pickled = keywords.get("allow_pickle")
            if pickled is not None and not (isinstance(pickled, ast.Constant) and pickled.value is False):
                offences.append(f"line {node.lineno}: allow_pickle={ast.unparse(pickled)}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "load" and id(node) not in safe:
            target = ast.unparse(node.value)
            if target.split(".")[0] in torch_names:
                offences.append(f"line {node.lineno}: {ast.unparse(node)} without weights_only=True")
    return offences


def test_no_pickle_loading_anywhere_in_the_code():
    """Weights load through safetensors only; any torch.load must pass weights_only=True."""
    offenders, scanned = [], {folder: 0 for folder in SCANNED}
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            scanned[folder] += 1
            offenders += [f"{path.relative_to(ROOT)} {o}" for o in pickle_offences(path.read_text())]
    assert all(scanned.values()), scanned
    assert offenders == []


@pytest.mark.parametrize(
    "source",
    [
        "import os, pickle",
        "import cloudpickle as cp",
        "from pickle import loads",
        "from torch import load",
        "from torch.serialization import load",
        "import torch\ntorch.load(path)",
        "import torch\ntorch.load(path, weights_only=False)",
        "import torch as t\nt.load(path)",
        "import torch\nloader = torch.load",
        "import torch\ntorch.serialization.load(path)",
        "import numpy as np\nnp.load(path, allow_pickle=True)",
    ],
)
def test_the_pickle_scan_catches_every_way_in(source):
    assert pickle_offences(source), source


def test_the_pickle_scan_lets_safe_loading_through():
    assert pickle_offences("import torch\ntorch.load(path, map_location='cpu', weights_only=True)") == []
    assert pickle_offences("from safetensors.torch import load_file\nimport json\njson.load(f)") == []


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


def test_an_adapter_file_holding_nan_is_refused_on_read(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from zflora.method.adapter_file import read_adapter

    zm = zflora.get_zflora_model(tiny_model(), ZFLoRAConfig(r=4))
    randomize_adapter(zm)
    fused = zm.fuse()
    path = zm.save_adapter(tmp_path / "adapter")
    weights = path / "adapter_model.safetensors"
    with safe_open(weights, "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(weights)
    key = sorted(tensors)[1]
    tensors[key][0, 0] = float("nan")  # a file damaged after save_adapter checked it
    save_file(tensors, weights, metadata=metadata)
    with pytest.raises(
        ZFLoRAError, match=rf"adapter weights '.*' hold non-finite values in {re.escape(key)}; re-"
    ):
        read_adapter(path)
    before = {k: v.clone() for k, v in zm.adapter_state_dict().items()}
    with pytest.raises(ZFLoRAError, match="hold non-finite values"):
        zm.load_adapter(path)
    assert all(torch.equal(before[k], v) for k, v in zm.adapter_state_dict().items())
    state = {k: v.clone() for k, v in fused.state_dict().items()}
    with pytest.raises(ZFLoRAError, match="hold non-finite values"):
        zflora.swap_adapter(fused, path)
    assert all(torch.equal(state[k], v) for k, v in fused.state_dict().items())


def test_fusion_refuses_an_adapter_whose_embedding_product_overflows(tmp_path):
    """Every value of the adapter is finite, but E·P does not fit the fused model's float16."""
    zm = zflora.get_zflora_model(tiny_model(), ZFLoRAConfig(r=4))
    randomize_adapter(zm)
    fused = zm.fuse().to(torch.float16)
    with torch.no_grad():
        zm.adapter_state_dict()["model.embed_tokens.P"].fill_(1e6)  # E·P ~ 1e5 > float16's 65504
    path = zm.save_adapter(tmp_path / "huge")  # finite: saved
    state = {k: v.clone() for k, v in fused.state_dict().items()}
    with pytest.raises(ZFLoRAError, match=r"its embed product overflows \(torch.float16\); not fusing it"):
        zflora.swap_adapter(fused, path)
    assert all(torch.equal(state[k], v) for k, v in fused.state_dict().items())  # checked before any write
    with pytest.raises(ZFLoRAError, match="embed product overflows"):
        zflora.swap_adapter(fused, zm.adapter_weights())


def test_swap_refuses_adapter_values_beyond_the_fused_models_dtype():
    """1e5 is finite in the adapter's float32 but not in a float16 model: refused before any write."""
    zm = zflora.get_zflora_model(tiny_model(), ZFLoRAConfig(r=4))
    randomize_adapter(zm)
    fused = zm.fuse().to(torch.float16)
    key = "model.layers.1.mlp.down_proj.A"
    with torch.no_grad():
        zm.adapter_state_dict()[key][0, 0] = 1e5
    state = {k: v.clone() for k, v in fused.state_dict().items()}
    with pytest.raises(ZFLoRAError, match=rf"{re.escape(key)} holds values beyond the range of .*float16"):
        zflora.swap_adapter(fused, zm.adapter_weights())
    assert all(torch.equal(state[k], v) for k, v in fused.state_dict().items())
    assert all(torch.isfinite(v).all() for v in fused.state_dict().values())


# ----------------------------------------------------------------------------- writes cut off midway


class DiskFull(OSError):
    pass


def cut_writes_short(monkeypatch, module, at: int, only: str = "") -> None:
    """Files that `module` opens for writing (those whose name contains `only`) take `at` - 1
    writes, then half of the next one and fail (a full disk, a kill): the failure lands in the
    middle of writing the output."""
    import builtins

    writes = {"count": 0}

    class Failing:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            if only not in Path(self.handle.name).name:
                return self.handle.write(data)
            writes["count"] += 1
            if writes["count"] >= at:
                self.handle.write(data[: len(data) // 2])
                self.handle.flush()
                raise DiskFull(28, "No space left on device")
            return self.handle.write(data)

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()
            return False

    def failing_open(file, mode="r", *args, **kwargs):
        handle = builtins.open(file, mode, *args, **kwargs)
        return Failing(handle) if any(c in mode for c in "wax") else handle

    monkeypatch.setattr(module, "open", failing_open, raising=False)


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_predictions_and_metrics_survive_a_write_cut_off_midway(tmp_path, monkeypatch):
    import zflora.harness.evaluate as evaluate
    from zflora.harness.data import Example, get_task

    answer = {"completion": "7"}

    def forms(method, *args, **kwargs):
        return {form: (None, None) for form in evaluate.VARIANTS[method]}

    def scored(model, tokenizer, task, examples, *args):
        rows = [{"id": e.id, "completion": answer["completion"]} for e in examples]
        return {"accuracy": 0.5}, rows

    monkeypatch.setattr(evaluate, "build_variants", forms)
    monkeypatch.setattr(evaluate, "evaluate_examples", scored)
    examples = [Example(str(i), f"q{i}", " 7", "7") for i in range(20)]
    out = tmp_path / "eval" / "zflora"
    task = get_task("embedded-math")
    evaluate.evaluate_method(task, "zflora", "base", "adapter", examples, out, progress=False)
    old = tree(out)
    assert {"metrics.json", "predictions-zflora.jsonl", "predictions-zflora-fused.jsonl"} <= set(old)
    answer["completion"] = "8"  # the new run would write other predictions
    cut_writes_short(monkeypatch, evaluate, at=3)  # in the first predictions file
    with pytest.raises(DiskFull):
        evaluate.evaluate_method(task, "zflora", "base", "adapter", examples, out, progress=False)
    assert tree(out) == old  # the previous predictions and metrics, byte for byte
    assert [p.name for p in out.parent.iterdir()] == ["zflora"]  # no temporary left behind


def test_a_metrics_file_survives_a_write_cut_off_midway(tmp_path, monkeypatch):
    import zflora.method.atomic as atomic
    from tasks.io import write_json

    target = tmp_path / "metrics" / "eval.json"
    write_json(target, {"accuracy": 0.5})
    old = target.read_bytes()
    cut_writes_short(monkeypatch, atomic, at=1)
    with pytest.raises(DiskFull):
        write_json(target, {"accuracy": 0.75, "rows": list(range(100))})
    assert target.read_bytes() == old
    assert [p.name for p in target.parent.iterdir()] == ["eval.json"]


def test_the_report_survives_a_write_cut_off_midway(tmp_path, monkeypatch):
    import json

    import mlflow

    import zflora.method.atomic as atomic
    from tasks.report import build_report

    monkeypatch.setattr(mlflow, "log_artifacts", lambda *args, **kwargs: None)
    eval_root = tmp_path / "eval" / "t" / "zflora"
    eval_root.mkdir(parents=True)
    (eval_root / "metrics.json").write_text(
        json.dumps({"metric": "accuracy", "accuracy": 0.5, "prediction_agreement": 1.0})
    )
    roots = [str(tmp_path / name) for name in ("eval", "train", "tune", "profile")]
    out = tmp_path / "reports"
    build_report.fn(*roots, ["t"], ["zflora"], [], "old title", str(out))
    old = tree(out)
    assert "old title" in old["accuracy.md"].decode()
    cut_writes_short(monkeypatch, atomic, at=1)  # accuracy.md is written, accuracy.json is cut off
    with pytest.raises(DiskFull):
        build_report.fn(*roots, ["t"], ["zflora"], [], "new title", str(out))
    assert tree(out) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval", "reports"]


def test_the_profile_survives_a_write_cut_off_midway(tmp_path, monkeypatch):
    import zflora.method.atomic as atomic
    from zflora.harness.profiling import ProfileSettings, run_profile

    settings = ProfileSettings(
        preset="tiny",
        layers=1,
        r=8,
        batch_sizes=(1,),
        prompt_lengths=(3,),
        decode_tokens=1,
        repeats=1,
        warmup=0,
        variants=("base", "zflora-fused"),
        memory=False,
        switch=False,
    )
    out = tmp_path / "profile"
    run_profile(settings, out, progress=False)
    old = tree(out)
    assert {"profile.json", "profile.md"} <= set(old)
    cut_writes_short(monkeypatch, atomic, at=1, only="profile.md")  # after a whole new profile.json
    with pytest.raises(DiskFull):
        run_profile(settings, out, progress=False)
    assert tree(out) == old
    assert [p.name for p in tmp_path.iterdir()] == ["profile"]


def test_resuming_training_loads_checkpoints_with_weights_only(model_dir, tmp_path, monkeypatch):
    """HF Trainer restores the optimizer, scheduler and RNG states with torch.load: never a full unpickle."""
    import zflora.harness.train as train
    from zflora.harness.data import Example

    class Killed(Exception):
        pass

    real_trainer_class = train.make_trainer_class

    def dies_after_the_first_checkpoint():
        class Dying(real_trainer_class()):
            def training_step(self, *args, **kwargs):
                if self.state.global_step == 2:  # checkpoint-2 is on disk
                    raise Killed
                return super().training_step(*args, **kwargs)

        return Dying

    examples = [Example(str(i), "the cat", " sat on the mat", "x") for i in range(16)]
    settings = train.TrainSettings(max_steps=4, batch_size=4, save_steps=2)
    work = tmp_path / "work"
    monkeypatch.setattr(train, "make_trainer_class", dies_after_the_first_checkpoint)
    with pytest.raises(Killed):
        train.train_method(
            model_dir, examples, tmp_path / "out", "zflora", settings, work_dir=work, progress=False
        )
    monkeypatch.setattr(train, "make_trainer_class", real_trainer_class)
    loads = []
    real_load = torch.load

    def spy(*args, **kwargs):
        loads.append((args[0] if args else kwargs.get("f"), kwargs.get("weights_only")))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    summary = train.train_method(
        model_dir, examples, tmp_path / "out", "zflora", settings, work_dir=work, progress=False
    )
    assert summary["resumed_from_step"] == 2 and summary["steps"] == 4
    names = {Path(str(f)).name for f, _ in loads}
    assert {"optimizer.pt", "scheduler.pt"} <= names, loads  # the resume really read the checkpoint
    assert all(weights_only is True for _, weights_only in loads), loads
