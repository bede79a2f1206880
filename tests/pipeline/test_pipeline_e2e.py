"""End to end on the smoke params: a run triggered through the Prefect API (as the UI does)
goes through DVC, logs every stage to MLflow, registers the fused model, and can be served."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from .conftest import free_port

pytestmark = pytest.mark.slow

TASK = "embedded-math"
MODEL = f"zflora-tiny-{TASK}"
STAGES = ("base", "prepare", "train", "fuse", "evaluate", "profile", "report")
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
    out = pipeline_run.run("dvc", "plots", "show", "--json")
    assert "accuracy.png" in out.stdout and "loss" in out.stdout


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
    assert (MODEL, 1) in versions, versions


def test_generate_from_the_registry(pipeline_run):
    from_registry = pipeline_run.run(
        "zflora",
        "generate",
        "--model",
        f"models:/{MODEL}@latest",
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        "12",
    ).stdout
    from_dir = pipeline_run.run(
        "zflora",
        "generate",
        "--model",
        f"artifacts/fused/{TASK}",
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        "12",
    ).stdout
    assert from_registry == from_dir
    missing = pipeline_run.run(
        "zflora", "generate", "--model", "models:/no-such-model@latest", "--prompt", "x", check=False
    )
    assert (
        missing.returncode == 2
        and "zflora: error: cannot fetch models:/no-such-model@latest" in missing.stderr
    )
    assert "Traceback" not in missing.stderr


def test_mlflow_models_serve_answers_over_http(pipeline_run):
    port = free_port()
    env = {**pipeline_run.env, "MLFLOW_TRACKING_URI": f"sqlite:///{pipeline_run.root / 'mlflow.db'}"}
    server = subprocess.Popen(
        [
            shutil.which("mlflow", path=env["PATH"]),
            "models",
            "serve",
            "-m",
            f"models:/{MODEL}@latest",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=pipeline_run.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert server.poll() is None, server.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "mlflow models serve did not come up"
            time.sleep(1)
        body = json.dumps(
            {"dataframe_records": [{"prompt": PROMPT}], "params": {"max_new_tokens": 12}}
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            predictions = json.loads(response.read())["predictions"]
        expected = pipeline_run.run(
            "zflora",
            "generate",
            "--model",
            f"artifacts/fused/{TASK}",
            "--prompt",
            PROMPT,
            "--max-new-tokens",
            "12",
        ).stdout.strip()
        assert predictions == [expected]
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def test_torchrun_trains_with_two_processes_through_the_stage_entry_point(pipeline_run, tmp_path):
    """`torchrun --nproc_per_node 2` (gloo on CPU) through `python -m flows.train`, like the DVC stage."""
    copy = tmp_path / "ddp"
    shutil.copytree(
        pipeline_run.root, copy, ignore=shutil.ignore_patterns(".prefect", "mlartifacts", "serve.log")
    )
    env = {**pipeline_run.env, "PYTHONPATH": str(copy)}
    out = subprocess.run(
        [
            shutil.which("torchrun", path=env["PATH"]),
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            "-m",
            "flows.train",
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
