"""The MLflow registry, unit level: models-from-code (no pickle), the multi-task model's versions,
per-row task routing through pyfunc, `zflora generate --task` from `models:/` (temporary sqlite store)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import VOCAB, randomize_adapter, tiny_model, tiny_tokenizer

import zflora
from zflora.harness.generation import generate_text
from zflora.method.export import fuse_to_directory
from zflora.method.loading import load_causal_lm

TASKS = ("alpha", "beta")
PROMPTS = ["the cat sat on", "two plus three", "hello", "a b c d e f", "the mat"]
NEW = 5
PICKLE_SUFFIXES = (".pkl", ".pickle", ".cloudpickle", ".joblib")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A project root with a base, two task adapters (alpha twice: retrained) and their fused checkpoints."""
    root = tmp_path_factory.mktemp("registry")
    tokenizer = tiny_tokenizer()
    base = tiny_model("llama", tied=True, vocab=max(VOCAB, len(tokenizer)))
    base.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    zm = zflora.get_zflora_model(base, zflora.ZFLoRAConfig(r=4), adapter_name="alpha")
    for seed, name in enumerate(("alpha", "beta", "alpha2")):
        if name != "alpha":
            zm.add_adapter(name, zflora.ZFLoRAConfig(r=4))
            zm.set_adapter(name)
        randomize_adapter(zm, std=0.15, seed=seed + 3)
        zm.save_adapter(root / "train" / name, adapter_name=name)
        fuse_to_directory(root / "base", root / "train" / name, root / "fused" / name)
    return root


def expected(store: Path, fused: str, prompts: list[str]) -> list[str]:
    model, tokenizer = load_causal_lm(store / "fused" / fused)
    return [generate_text(model, tokenizer, [p], max_new_tokens=NEW)[0] for p in prompts]


def base_expected(store: Path, prompts: list[str]) -> list[str]:
    model, tokenizer = load_causal_lm(store / "base")
    return [generate_text(model, tokenizer, [p], max_new_tokens=NEW)[0] for p in prompts]


def registered_files(store: Path) -> list[Path]:
    return [p for p in (store / "mlartifacts").rglob("*") if p.is_file()]


NAME = "zflora-unit"


@pytest.fixture(scope="module")
def registered(store):
    """fuse@alpha, fuse@beta, then alpha retrained: each run registers its task and a multi-task version."""
    from tasks.fusion import register, register_multitask
    from tasks.tracking import stage_run

    versions = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZFLORA_PROJECT_ROOT", str(store))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(store)
        for task, trained in (("alpha", "alpha"), ("beta", "beta"), ("alpha", "alpha2")):
            with stage_run("fuse", "unit", {}, tags={"task": task}):
                fused_dir, train_dir = str(store / "fused" / trained), str(store / "train" / trained)
                register.fn(fused_dir, f"{NAME}-{task}", "latest", {"task": task})
                versions[trained] = register_multitask.fn(
                    task, train_dir, fused_dir, NAME, "latest", {"task": task}
                )
    return versions


@pytest.fixture
def in_store(store, monkeypatch):
    monkeypatch.setenv("ZFLORA_PROJECT_ROOT", str(store))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(store)
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    return store


def references(store: Path) -> dict[str | None, dict[str, str]]:
    return {
        "alpha": dict(zip(PROMPTS, expected(store, "alpha2", PROMPTS))),  # alpha was retrained
        "beta": dict(zip(PROMPTS, expected(store, "beta", PROMPTS))),
        None: dict(zip(PROMPTS, base_expected(store, PROMPTS))),
    }


def test_registry_holds_code_and_safetensors_and_routes_rows_by_task(registered, in_store):
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from tasks.registry import resolve_models_uri

    store, name, versions = in_store, NAME, registered
    assert [versions[t]["tasks"] for t in ("alpha", "beta", "alpha2")] == [
        ["alpha"],
        ["alpha", "beta"],
        ["alpha", "beta"],
    ]
    assert versions["alpha2"]["version"] == "3" and versions["alpha2"]["previous_version"] == "2"

    files = registered_files(store)
    assert not [p for p in files if p.name.endswith(PICKLE_SUFFIXES) or "pickle" in p.name], files
    mlmodels = [p for p in files if p.name == "MLmodel"]
    assert len(mlmodels) == 6  # three runs, each a per-task and a multi-task version
    for mlmodel in mlmodels:
        text = mlmodel.read_text()
        assert "loader_module: mlflow.pyfunc.loaders.code_model" in text and "python_model.pkl" not in text
    weights = {p.suffix for p in files if p.parent.name in ("base", "hf_model") or "adapters" in p.parts}
    assert ".bin" not in weights and ".safetensors" in weights

    client = mlflow.MlflowClient()
    latest = client.get_model_version_by_alias(name, "latest")
    assert str(latest.version) == "3" and latest.tags["tasks"] == "alpha,beta"
    info = mlflow.models.get_model_info(f"models:/{name}@latest")
    assert sorted(info.metadata["zflora"]["tasks"]) == ["alpha", "beta"]

    # one request, rows of every task and of the base, shuffled: each equals its own fused model
    rows = [(p, t) for p in PROMPTS[:3] for t in ("beta", None, "alpha")]
    rows = rows[::2] + rows[1::2]
    model = mlflow.pyfunc.load_model(f"models:/{name}@latest")
    records = [{"prompt": p, "task": t} if t else {"prompt": p} for p, t in rows]
    out = model.predict(pd.DataFrame(records), params={"max_new_tokens": NEW})
    reference = references(store)
    for task in ("alpha", "beta"):  # else "task rows equal their fused model, base rows the base" says little
        assert any(reference[task][p] != reference[None][p] for p, _ in rows), task
    assert out == [reference[t][p] for p, t in rows]
    # ... in one pass: a single batch, every row with its own adapter (no swap per task)
    multitask = model.unwrap_python_model().multitask
    assert [(path, sorted(tasks, key=str)) for path, tasks in multitask.last_batches] == [
        ("mixed", sorted((t for _, t in rows), key=str))
    ]
    with pytest.raises(MlflowException, match="unknown task 'gamma'; known tasks: alpha, beta"):
        model.predict(pd.DataFrame([{"prompt": "hello", "task": "gamma"}]))
    assert model.predict(
        pd.DataFrame([{"prompt": PROMPTS[0], "task": None}]), params={"max_new_tokens": NEW}
    ) == [reference[None][PROMPTS[0]]]

    # the per-task model serves its own task (or rows without one) and refuses another
    single = mlflow.pyfunc.load_model(f"models:/{name}-beta@latest")
    assert single.predict(pd.DataFrame({"prompt": PROMPTS[:2]}), params={"max_new_tokens": NEW}) == [
        reference["beta"][p] for p in PROMPTS[:2]
    ]
    with pytest.raises(MlflowException, match="serves task 'beta' only, not 'alpha'"):
        single.predict(pd.DataFrame([{"prompt": "x", "task": "alpha"}]))

    # `zflora generate --model models:/...`: the resolver gives the multi-task directory
    assert (Path(resolve_models_uri(f"models:/{name}@latest")) / "multitask.json").is_file()
    assert json.loads((Path(resolve_models_uri(f"models:/{name}/1")) / "multitask.json").read_text())[
        "tasks"
    ].keys() == {"alpha"}


def test_generate_cli_task_option(store, monkeypatch, capsys):
    """`zflora generate --task` on a multi-task directory equals the task's fused checkpoint; mistakes are one line."""
    from zflora.cli import main
    from zflora.method.multitask import MultiTaskModel

    fused, tokenizer = load_causal_lm(store / "fused" / "beta")
    MultiTaskModel(
        fused, {"alpha": store / "train" / "alpha", "beta": store / "train" / "beta"}, tokenizer
    ).save(store / "mt")
    argv = ["generate", "--model", str(store / "mt"), "--max-new-tokens", str(NEW), "--prompt", PROMPTS[0]]
    assert main([*argv, "--task", "alpha"]) == 0
    assert capsys.readouterr().out.strip() == expected(store, "alpha", PROMPTS[:1])[0]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == base_expected(store, PROMPTS[:1])[0]
    assert main([*argv, "--task", "gamma"]) == 2
    assert "unknown task 'gamma'; known tasks: alpha, beta" in capsys.readouterr().err
    single = ["generate", "--model", str(store / "fused" / "beta"), "--prompt", "x", "--task", "beta"]
    assert main(single) == 2
    assert "--task needs a multi-task model" in capsys.readouterr().err


@pytest.mark.slow
def test_mlflow_models_serve_answers_a_shuffled_mixed_request(registered, in_store):
    """One HTTP request, rows of every task and of the base in random order, through a real server."""
    import os
    import random
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from .mlflow_serve import invoke, mlflow_serve

    store = in_store
    reference = references(store)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}",
    }
    rows = [(p, t) for p in PROMPTS for t in ("alpha", "beta", None)]
    random.Random(0).shuffle(rows)
    # base rows: some with "task": null, some without a task key
    records = [
        {"prompt": p} if t is None and i % 2 else {"prompt": p, "task": t} for i, (p, t) in enumerate(rows)
    ]
    assert any("task" not in r for r in records) and any(r.get("task", "") is None for r in records)
    with mlflow_serve(f"models:/{NAME}@latest", env, store) as url:
        status, body = invoke(url, records, NEW)
        assert status == 200, body
        assert body["predictions"] == [reference[t][p] for p, t in rows]
        status, body = invoke(url, [{"prompt": "hello", "task": "gamma"}], NEW)
        assert status == 400 and "unknown task 'gamma'; known tasks: alpha, beta" in json.dumps(body), body
        # concurrent requests, each of one task: none sees another's adapter
        jobs = [[{"prompt": p, "task": t} for p in PROMPTS] for t in ("alpha", "beta", "alpha", "beta")]
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda job: invoke(url, job, NEW), jobs))
        for job, (status, body) in zip(jobs, answers):
            assert status == 200 and body["predictions"] == [reference[r["task"]][r["prompt"]] for r in job]
