"""Interrupted and concurrent runs, and user errors inside stages (docs/reliability.md).

Each test works on its own copy of the project that `pipeline_run` built, so the shared
run stays intact.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest
import yaml

from zflora.harness.train import checkpoint_step, last_complete_checkpoint

from .conftest import Project

pytestmark = pytest.mark.slow
TASK = "embedded-math"


def set_params(project: Project, **changes) -> None:
    path = project.root / "params.yaml"
    data = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        data[section][key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_killed_training_resumes_from_its_last_checkpoint(project):
    set_params(
        project,
        **{"train.max_steps": 400, "train.save_steps": 5, "train.logging_steps": 5, "train.seeds": 1},
    )
    stage = f"train@{TASK}-zflora"
    checkpoints = project.root / "work" / "checkpoints" / TASK / "zflora"
    process = subprocess.Popen(
        ["dvc", "repro", "--single-item", stage],
        cwd=project.root,
        env=project.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while (complete := last_complete_checkpoint(checkpoints)) is None:
        assert process.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    # the kill may land while a later checkpoint is being written: resume must skip that one
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = checkpoint_step(complete)
    out_dir = project.root / "artifacts" / "train" / TASK / "zflora"
    assert not (out_dir / "method.json").exists()  # nothing half-written for DVC to cache

    project.run("dvc", "repro", "--single-item", stage, timeout=900)
    manifest = json.loads((out_dir / "method.json").read_text())
    assert manifest["resumed_from_step"] >= killed_at > 0
    assert manifest["steps"] == 400
    assert not checkpoints.exists()  # cleaned up after a finished run


def test_dvc_refuses_a_concurrent_command_in_the_same_workspace(project):
    import zc.lockfile

    held = zc.lockfile.LockFile(str(project.root / ".dvc" / "tmp" / "lock"))
    try:
        out = project.run("dvc", "repro", check=False, timeout=120)
    finally:
        held.close()
    assert out.returncode != 0
    assert "Unable to acquire lock" in out.stderr + out.stdout


def latest_run_status(project: Project, stage: str) -> str:
    db = sqlite3.connect(project.root / "mlflow.db")
    row = db.execute(
        "SELECT r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
        "WHERE t.key = 'stage' AND t.value = ? ORDER BY r.start_time DESC LIMIT 1",
        (stage,),
    ).fetchone()
    return row[0]


def test_a_corrupt_adapter_fails_the_fuse_stage_cleanly(project):
    adapter = project.root / "artifacts" / "train" / TASK / "zflora" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:100])
    fused = project.root / "artifacts" / "fused" / TASK / "model.safetensors"
    before = fused.read_bytes()
    out = project.run("python", "-m", "flows", "fuse", "--task", TASK, check=False)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("zflora: error: adapter weights")
    assert "corrupt or truncated" in out.stderr and "Traceback" not in out.stderr + out.stdout
    assert fused.read_bytes() == before  # the previous output is intact
    assert latest_run_status(project, "fuse") == "FAILED"


def test_a_malformed_dataset_file_fails_the_prepare_stage_cleanly(project):
    data_dir = project.root / "local-data"
    (data_dir / "gsm8k").mkdir(parents=True)
    (data_dir / "gsm8k" / "train.jsonl").write_text('{"question": "1+1?", "answer": "#### 2"}\n{not json\n')
    (data_dir / "gsm8k" / "test.jsonl").write_text("")
    set_params(project, **{"data.tasks": ["gsm8k"], "data.data_dir": str(data_dir)})
    out = project.run("python", "-m", "flows", "prepare", "--task", "gsm8k", check=False)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("zflora: error: ") and "gsm8k" in last, last
    assert "Traceback" not in out.stderr + out.stdout
    assert not (project.root / "artifacts" / "data" / "gsm8k").exists()
    assert latest_run_status(project, "prepare") == "FAILED"
