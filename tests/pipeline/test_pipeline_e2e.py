"""End to end on the smoke params: a run triggered through the Prefect API (as the UI does)
goes through DVC, logs every stage to MLflow, registers the fused and the multi-task model, and
both can be served."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import time

import pytest

pytestmark = pytest.mark.slow

TASK = "embedded-math"
MODEL = f"zflora-tiny-{TASK}"
MULTITASK = "zflora-tiny"  # every task's adapter on one fused base
STAGES = ("base", "prepare", "tune", "train", "fuse", "evaluate", "profile", "report")
PROMPT = "Tom has 3 apples and buys 4 more. How many apples does he have?"


def test_ui_triggered_run_completes_as_a_dvc_experiment(pipeline_run):
    assert pipeline_run.result["state"] == "COMPLETED", pipeline_run.result
    root = pipeline_run.root
    for path in (
        "artifacts/base/config.json",
        f"artifacts/data/{TASK}/test.jsonl",
        f"artifacts/train/{TASK}/zflora/adapter_model.safetensors",
        f"artifacts/train/{TASK}/lora/adapter_config.json",
        f"artifacts/fused/{TASK}/config.json",
        f"artifacts/eval/{TASK}/zflora/predictions-zflora-fused.jsonl",
        "artifacts/profile/base/profile.json",
        "reports/accuracy.md",
        "reports/accuracy.png",
        "reports/latency.md",
    ):
        assert (root / path).exists(), path
    # the protocol: learning rate selected on the validation split, two seeds, mean and range
    selection = json.loads((root / "artifacts/tune/zflora/selection.json").read_text())
    assert selection["tuned"] and selection["learning_rate"] in (0.005, 0.01), selection
    assert set(selection["scores"]) == {"0.005", "0.01"}, selection
    assert (
        json.loads((root / f"artifacts/train/{TASK}/zflora/method.json").read_text())["learning_rate"]
        == (selection["learning_rate"])
    )
    assert (root / f"artifacts/train/{TASK}/zflora/seeds/1/adapter_model.safetensors").is_file()
    metrics = json.loads((root / f"artifacts/eval/{TASK}/zflora/metrics.json").read_text())
    assert set(metrics["seeds"]) == {"0", "1"}, metrics
    assert metrics["score_min"] <= metrics["score_mean"] <= metrics["score_max"]
    report = (root / "reports/accuracy.md").read_text()
    assert "Mean over 2 training seeds" in report and "(validation)" in report and "(fixed)" in report
    assert "Learning-rate selection" in report, report
    # the override went through `dvc exp run --set-param`: recorded as an experiment, applied to params
    experiments = pipeline_run.run("dvc", "exp", "list", "--all-commits", "--name-only").stdout.split()
    assert len(experiments) == 1, experiments
    assert "batch_size: 4" in (root / "params.yaml").read_text()
    status = pipeline_run.run("dvc", "status").stdout
    assert "up to date" in status, status
    print(f"smoke pipeline through the Prefect API: {pipeline_run.seconds:.0f} s")


def test_noop_repro_retrains_nothing(pipeline_run):
    root = pipeline_run.root
    watched = sorted((root / "artifacts").rglob("*.safetensors"))
    before = {p: p.stat().st_mtime_ns for p in watched}
    start = time.perf_counter()
    out = pipeline_run.run("dvc", "repro")
    seconds = time.perf_counter() - start
    assert "Running stage" not in out.stdout, out.stdout
    assert before == {p: p.stat().st_mtime_ns for p in watched}
    print(f"no-op dvc repro: {seconds:.1f} s")


def test_metrics_and_plots_are_declared(pipeline_run):
    metrics = json.loads(pipeline_run.run("dvc", "metrics", "show", "--json").stdout)
    text = json.dumps(metrics)
    for key in ("accuracy", "prediction_agreement", "trainable_parameters", "switch_zflora-swap_ms"):
        assert key in text, key
    # every form of a method (fused / unfused, merged / unmerged) predicts the same on every test example
    agreements = {
        path: figures["prediction_agreement"]
        for path, figures in metric_files(metrics)
        if "prediction_agreement" in figures
    }
    methods = {path.rsplit("/", 1)[-1].removesuffix(".json") for path in agreements}
    assert {"lora", "zflora"} <= methods, agreements  # the methods served in two forms are there
    assert all(value == 1.0 for value in agreements.values()), agreements
    out = pipeline_run.run("dvc", "plots", "show", "--json")
    assert "accuracy.png" in out.stdout and "loss" in out.stdout


def metric_files(shown: dict) -> list[tuple[str, dict]]:
    """(path, figures) of every metrics file in `dvc metrics show --json` output."""
    return [
        (path, entry["data"])
        for workspace in shown.values()
        for path, entry in workspace.get("data", {}).items()
        if isinstance(entry.get("data"), dict)
    ]


def test_mlflow_holds_a_run_per_stage_and_the_registered_model(pipeline_run):
    db = sqlite3.connect(pipeline_run.root / "mlflow.db")
    rows = db.execute(
        "SELECT t.value, r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid WHERE t.key = 'stage'"
    ).fetchall()
    stages = {stage for stage, status in rows if status == "FINISHED"}
    assert stages == set(STAGES), rows
    tag_keys = {k for (k,) in db.execute("SELECT DISTINCT key FROM tags")}
    assert {"task", "method", "dvc_stage", "git_commit"} <= tag_keys
    versions = db.execute("SELECT name, version FROM model_versions").fetchall()
    assert (MODEL, 1) in versions and (MULTITASK, 1) in versions, versions
    tags = dict(
        db.execute(
            "SELECT key, value FROM model_version_tags WHERE name = ? AND version = 1", (MULTITASK,)
        ).fetchall()
    )
    assert tags["tasks"] == TASK


def test_registered_versions_hold_code_and_safetensors_not_pickles(pipeline_run):
    """Models-from-code: every registered version is source + safetensors; loading unpickles nothing."""
    files = [p for p in (pipeline_run.root / "mlartifacts").rglob("*") if p.is_file()]
    mlmodels = [p for p in files if p.name == "MLmodel"]
    assert len(mlmodels) >= 2, files
    pickles = [p for p in files if p.suffix in (".pkl", ".pickle", ".joblib") or "pickle" in p.name]
    assert pickles == []
    for mlmodel in mlmodels:
        text = mlmodel.read_text()
        assert "loader_module: mlflow.pyfunc.loaders.code_model" in text and "python_model.pkl" not in text
        weights = [p for p in mlmodel.parent.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt")]
        assert weights and all(p.suffix == ".safetensors" for p in weights), weights


def generate(project, model: str, prompt: str, *extra: str) -> str:
    """`zflora generate` in the project. A model folder is read in this process (a subprocess
    only adds the interpreter's start; the console script itself: tests/test_cli.py), a
    registry URI through the console script, as a user runs it."""
    argv = ["generate", "--model", model, "--prompt", prompt, "--max-new-tokens", "12", *extra]
    if model.startswith("models:/"):
        return project.run("zflora", *argv).stdout.strip()
    import contextlib
    import io

    from zflora.cli import main

    out = io.StringIO()
    with contextlib.chdir(project.root), contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return out.getvalue().strip()


def test_generate_from_the_registry(pipeline_run):
    from_dir = generate(pipeline_run, f"artifacts/fused/{TASK}", PROMPT)
    base = generate(pipeline_run, "artifacts/base", PROMPT)
    # the task's adapter changes this prompt's answer, so "task = fused, no task = base" below is not vacuous
    assert from_dir != base, from_dir
    assert generate(pipeline_run, f"models:/{MODEL}@latest", PROMPT) == from_dir
    # the multi-task model: --task picks the adapter; without it, the base model
    assert generate(pipeline_run, f"models:/{MULTITASK}@latest", PROMPT, "--task", TASK) == from_dir
    assert generate(pipeline_run, f"models:/{MULTITASK}@latest", PROMPT) == base
    unknown = pipeline_run.run(
        "zflora",
        "generate",
        "--model",
        f"models:/{MULTITASK}@latest",
        "--task",
        "nope",
        "--prompt",
        "x",
        check=False,
    )
    assert unknown.returncode == 2 and f"unknown task 'nope'; known tasks: {TASK}" in unknown.stderr
    missing = pipeline_run.run(
        "zflora", "generate", "--model", "models:/no-such-model@latest", "--prompt", "x", check=False
    )
    assert (
        missing.returncode == 2
        and "zflora: error: cannot fetch models:/no-such-model@latest" in missing.stderr
    )
    assert "Traceback" not in missing.stderr


def test_mlflow_models_serve_answers_over_http(pipeline_run):
    """The multi-task model over HTTP: task rows and base rows (null or no task) mixed in one request."""
    from .mlflow_serve import invoke, mlflow_serve

    env = {**pipeline_run.env, "MLFLOW_TRACKING_URI": f"sqlite:///{pipeline_run.root / 'mlflow.db'}"}
    prompts = [PROMPT, "Sara has 5 pens and gives away 2. How many pens does she have left?"]
    fused = {p: generate(pipeline_run, f"artifacts/fused/{TASK}", p) for p in prompts}
    base = {p: generate(pipeline_run, "artifacts/base", p) for p in prompts}
    records = [
        {"prompt": prompts[1], "task": None},
        {"prompt": prompts[0], "task": TASK},
        {"prompt": prompts[0]},
        {"prompt": prompts[1], "task": TASK},
    ]
    # the task's adapter changes both answers: a task row answered by the base (or a base row by the
    # adapter) cannot match the expected list by accident
    assert all(fused[p] != base[p] for p in prompts), (fused, base)
    expected = [base[prompts[1]], fused[prompts[0]], base[prompts[0]], fused[prompts[1]]]
    with mlflow_serve(f"models:/{MULTITASK}@latest", env, pipeline_run.root) as url:
        status, body = invoke(url, records, 12)
        assert status == 200 and body["predictions"] == expected, body
        status, body = invoke(url, [{"prompt": PROMPT, "task": "nope"}], 12)
        assert status == 400 and f"known tasks: {TASK}" in json.dumps(body), body
        status, body = invoke(url, records[:2], 12)  # still serving
        assert status == 200 and body["predictions"] == expected[:2]
    with mlflow_serve(f"models:/{MODEL}@latest", env, pipeline_run.root) as url:  # the per-task model
        status, body = invoke(url, [{"prompt": PROMPT}], 12)
        assert status == 200 and body["predictions"] == [fused[PROMPT]], body


def test_torchrun_trains_with_two_processes_through_the_stage_entry_point(pipeline_run, tmp_path):
    """`torchrun --standalone --nproc_per_node 2` (gloo on CPU) through `python -m flows train`, like the DVC stage."""
    copy = tmp_path / "ddp"
    shutil.copytree(
        pipeline_run.root, copy, ignore=shutil.ignore_patterns(".prefect", "mlartifacts", "serve.log")
    )
    env = {**pipeline_run.env, "PYTHONPATH": str(copy)}
    out = subprocess.run(
        [
            shutil.which("torchrun", path=env["PATH"]),
            "--standalone",  # its rendezvous binds a port of the kernel's choosing: no port to race for
            "--nproc_per_node",
            "2",
            "-m",
            "flows",
            "train",
            "--task",
            TASK,
            "--method",
            "zflora",
        ],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    manifest = json.loads((copy / f"artifacts/train/{TASK}/zflora/method.json").read_text())
    assert manifest["world_size"] == 2
    assert manifest["steps"] == 6  # smoke params: max_steps 6, the same as the single-process run
    assert (copy / f"artifacts/train/{TASK}/zflora/adapter_model.safetensors").is_file()
