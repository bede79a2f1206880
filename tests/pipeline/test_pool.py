"""The DAG on a Prefect work pool (flows/pool.py), end to end on loopback (make cluster).

A session fixture starts what `make cluster WORKERS=2` starts: PostgreSQL, the Prefect
server and the MLflow tracking server on it, the pool `zflora` and two process workers,
each in its own workspace folder. Then:
- a pool run whose stage fails with a user error: the pipeline ends FAILED with one line
  naming the stage, and nothing that depends on it starts;
- a pool run of configs/smoke.yaml (with the override the serial `pipeline_run` uses), in
  which one worker is killed (SIGKILL to it and every process it started, as if its machine
  died) while it trains: the run completes on the other worker with the serial run's
  metrics; two stages ran at the same time on different workers; every stage's MLflow run
  is on the server; the coordinator's workspace is complete (`dvc status` clean, `dvc
  repro` runs nothing); the registered multi-task model serves every task.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from .conftest import BIN, ROOT, copy_project

pytestmark = pytest.mark.slow
OVERRIDE = ["-S", "evaluate.batch_size=4"]  # what the serial pipeline_run fixture sets


@pytest.fixture(scope="module")
def cluster():
    """`make cluster WORKERS=2` in a folder the postgres user can enter."""
    folder = Path(tempfile.mkdtemp(prefix="zflora-cluster-", dir="/tmp"))
    os.chmod(folder, 0o755)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "DVC_", "ZFLORA_"))
    }
    env.update(ZFLORA_CLUSTER_DIR=str(folder), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    up = subprocess.run(
        [sys.executable, "-m", "flows.cluster", "up", "--workers", "2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        client = {}
        for line in (folder / "env").read_text().splitlines():
            if line.startswith("export "):
                key, _, value = line[len("export ") :].partition("=")
                client[key] = value.strip("'")
        yield {
            "folder": folder,
            "env": env,
            "client": client,
            "state": json.loads((folder / "state.json").read_text()),
        }
    finally:
        subprocess.run(
            [sys.executable, "-m", "flows.cluster", "down"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=300,
        )
        shutil.rmtree(folder, ignore_errors=True)


def coordinator(tmp_path: Path, cluster: dict):
    project = copy_project(tmp_path / "coordinator")
    project.env = {**project.env, **cluster["client"]}
    return project


def test_a_stage_that_fails_stops_what_depends_on_it(cluster, tmp_path):
    project = coordinator(tmp_path, cluster)
    out = project.run(
        sys.executable, "-m", "flows.pipeline", "--pool", "zflora", "-S", "data.tasks=[gsm8k]",
        check=False, timeout=900,
    )  # fmt: skip
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("zflora: error: stage prepare@gsm8k failed:") and "gsm8k" in line
    assert "Traceback" not in out.stderr.split("zflora: error:")[-1]
    submitted = {
        word
        for entry in out.stdout.splitlines() + out.stderr.splitlines()
        if "submitted " in entry
        for word in entry.split()[-1:]
    }
    assert "prepare@gsm8k" in submitted
    assert not any(name.startswith(("tune@", "train@", "evaluate@")) for name in submitted)


def worker_running(state: dict, pid: int) -> str | None:
    """The name of the worker whose process tree holds `pid`."""
    workers = {p: name for name, p in state["workers"].items()}
    while pid > 1:
        if pid in workers:
            return workers[pid]
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
    return None


@pytest.fixture(scope="module")
def pool_run(cluster, pipeline_run, tmp_path_factory):
    """A pool run of the smoke config; one worker is killed while it trains."""
    project = coordinator(tmp_path_factory.mktemp("pool"), cluster)
    log = open(project.root / "coordinator.log", "w")  # noqa: SIM115
    started = time.monotonic()
    run = subprocess.Popen(
        [sys.executable, "-m", "flows.pipeline", "--pool", "zflora", *OVERRIDE],
        cwd=project.root, env=project.env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    killed: dict = {}
    script = """
import json, sys
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, FlowRunFilterState, FlowRunFilterStateType
with get_client(sync_client=True) as client:
    runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["RUNNING"]))))
    print(json.dumps([[r.name, r.infrastructure_pid] for r in runs if r.name.startswith("train@")]))
"""
    try:
        deadline = time.monotonic() + 900
        while not killed and run.poll() is None and time.monotonic() < deadline:
            out = project.run(sys.executable, "-c", script, check=False, timeout=120)
            running = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else []
            training = (project.root / "coordinator.log").read_text()
            for name, infrastructure in running:
                pid = int((infrastructure or ":0").rpartition(":")[2])
                worker = worker_running(cluster["state"], pid)
                if worker and "submitted " + name in training:
                    time.sleep(8)  # inside training
                    worker_pid = cluster["state"]["workers"][worker]
                    for group in {os.getpgid(worker_pid), os.getpgid(pid)}:
                        os.killpg(group, signal.SIGKILL)  # the worker and every process it started
                    killed = {"stage": name, "worker": worker, "at": time.monotonic() - started}
                    break
            time.sleep(2)
        code = run.wait(timeout=1800)
    finally:
        if run.poll() is None:
            run.kill()
        log.close()
    project.seconds = time.monotonic() - started
    project.result = {"code": code, "killed": killed, "log": (project.root / "coordinator.log").read_text()}
    yield project


def test_a_killed_worker_s_stage_runs_again_on_a_live_one(pool_run):
    result = pool_run.result
    assert result["killed"], "no train stage was seen running: nothing was killed\n" + result["log"][-3000:]
    assert result["code"] == 0, result["log"][-4000:]
    stage = result["killed"]["stage"]
    assert f"{stage}: crashed" in result["log"] and "submitting it again" in result["log"]
    assert f"submitted {stage}" in result["log"] and f"{stage}: completed" in result["log"]


def mlflow_runs(project) -> list[dict]:
    script = """
import json, mlflow
runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
print(json.dumps([{"name": r.info.run_name, "status": r.info.status, "start": r.info.start_time,
                   "end": r.info.end_time, "worker": r.data.tags.get("worker")} for r in runs]))
"""
    out = project.run(sys.executable, "-c", script, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_pool_run_equals_a_serial_run_and_leaves_a_complete_workspace(pool_run, pipeline_run, cluster):
    assert pool_run.result["code"] == 0, pool_run.result["log"][-4000:]
    project = pool_run
    # the coordinator ran no stage: everything came from the run-cache, and nothing is left to do
    status = project.run(str(BIN / "dvc"), "status", timeout=300)
    assert "up to date" in status.stdout, status.stdout
    again = project.run(str(BIN / "dvc"), "repro", timeout=600)
    assert "Running stage" not in again.stdout, again.stdout[-2000:]
    # the same metrics as the serial run of the same commit and params
    for path in sorted((pipeline_run.root / "metrics" / "eval").rglob("*.json")):
        serial = json.loads(path.read_text())
        pooled = json.loads((project.root / path.relative_to(pipeline_run.root)).read_text())
        for key in ("accuracy", "score", "score_mean", "prediction_agreement"):
            assert pooled.get(key) == serial.get(key), (path.name, key)
    for path in sorted((pipeline_run.root / "metrics" / "accuracy").glob("*.json")):
        assert json.loads((project.root / path.relative_to(pipeline_run.root)).read_text()) == json.loads(
            path.read_text()
        )
    # every stage ran on a worker and logged to the cluster's MLflow server; two at once, on different workers
    runs = [r for r in mlflow_runs(project) if r["status"] == "FINISHED"]
    names = {r["name"] for r in runs}
    listed = project.run(str(BIN / "dvc"), "stage", "list", "--name-only", timeout=120).stdout.split()
    assert set(listed) <= names, sorted(set(listed) - names)
    assert all(r["worker"] in ("w1", "w2") for r in runs if r["name"] in listed)
    overlapping = [
        (a["name"], b["name"])
        for a in runs
        for b in runs
        if a["worker"] != b["worker"]
        and a["start"] < b["end"]
        and b["start"] < a["end"]
        and a["name"] < b["name"]
    ]
    assert overlapping, "no two stages ran at the same time on different workers"
    # the multi-task model on the server serves every task
    script = """
import json, mlflow
model = mlflow.pyfunc.load_model("models:/zflora-tiny@latest")
print(json.dumps(sorted(model.unwrap_python_model().multitask.adapters)))
"""
    served = json.loads(
        project.run(sys.executable, "-c", script, timeout=600).stdout.strip().splitlines()[-1]
    )
    tasks = json.loads(
        project.run(
            sys.executable,
            "-c",
            "import yaml, json; print(json.dumps(yaml.safe_load(open('params.yaml'))['data']['tasks']))",
        ).stdout
    )
    assert served == sorted(tasks)
