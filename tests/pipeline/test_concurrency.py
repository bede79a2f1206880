"""Concurrent runs in one workspace (docs/reliability.md, Concurrency): they wait, never collide.

A second pipeline run waits for the first (`dvc` is a fake on PATH that records each
call, so the test sees whether and when a run reached DVC without running a stage), each
served deployment runs one run at a time, and two stages that start the workspace's
Prefect server at once start one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .conftest import BIN, ROOT, PortTaken, on_a_free_port, port_taken, prefect_servers_of

FAKE_DVC = """#!/bin/sh
echo "$@" >> "{log}"
exit 0
"""
HOLD_S = 4  # how long the first run holds the workspace once the second one waits for it


def workspace_with_fake_dvc(root: Path) -> tuple[Path, dict[str, str], Path]:
    """(a workspace holding dvc.yaml, the environment of a run there, the fake dvc's call log)."""
    workspace = root / "workspace"
    workspace.mkdir()
    shutil.copy(ROOT / "dvc.yaml", workspace)  # a run's targets are checked against its stages
    fake_bin = root / "fake-bin"
    fake_bin.mkdir()
    calls = root / "dvc-calls.log"
    (fake_bin / "dvc").write_text(FAKE_DVC.format(log=calls))
    (fake_bin / "dvc").chmod(0o755)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "DVC_", "ZFLORA_"))
    }
    env.update(
        PATH=f"{fake_bin}{os.pathsep}{BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(ROOT),
        PREFECT_HOME=str(root / ".prefect"),
        ZFLORA_PREFECT_MODE="ephemeral",  # no server of this workspace: the lock is what is tested
    )
    return workspace, env, calls


@pytest.mark.slow  # a Prefect server (ephemeral) starts: about 20 s
def test_a_second_pipeline_run_waits_for_the_first(tmp_path):
    """While a first run holds the workspace lock, a second run starts no stage; it goes on
    (and reaches DVC) once the lock is released."""
    workspace, env, calls = workspace_with_fake_dvc(tmp_path)
    lock_path = workspace / ".dvc" / "tmp" / "zflora-pipeline.lock"  # flows.pipeline.LOCK_FILE
    lock_path.parent.mkdir(parents=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a first run holds the workspace
        second = subprocess.Popen(
            [sys.executable, "-m", "flows.pipeline", "--target", "report"],
            cwd=workspace,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(second.stdout), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 240
            while not any("waiting for it to finish" in line for line in lines):  # it reached the lock
                assert second.poll() is None, "".join(lines)[-3000:]
                assert time.monotonic() < deadline, "the second run never reached the workspace lock"
                time.sleep(0.2)
            time.sleep(HOLD_S)  # the first run goes on
            assert second.poll() is None, "".join(lines)[-3000:]
            assert not calls.exists(), (
                f"a stage started while the first run held the workspace: {calls.read_text()}"
            )
        except BaseException:
            second.kill()
            raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    second.wait(timeout=300)
    reader.join(timeout=30)
    assert second.returncode == 0, "".join(lines)[-3000:]
    assert calls.read_text().splitlines() == ["repro report"]  # and then it ran, once


def test_every_deployment_flows_serve_serves_runs_one_run_at_a_time():
    """What `python -m flows.serve` hands to `prefect.serve`: the pipeline and one deployment
    per stage, each with a concurrency limit of 1 (test_security.py checks the server's view)."""
    from flows import serve
    from flows.layout import STAGES

    limits = {deployment.name: deployment.concurrency_limit for deployment in serve.deployments()}
    assert limits == {name: 1 for name in ["pipeline", *(f"stage-{stage}" for stage in STAGES)]}


def server_env(tmp_path: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ZFLORA_"))}
    env.update(PREFECT_HOME=str(tmp_path / ".prefect"), ZFLORA_PREFECT_PORT=str(port), PYTHONPATH=str(ROOT))
    return env


@pytest.mark.slow  # a Prefect server starts: about 20 s
def test_two_stages_starting_the_server_at_once_start_one(tmp_path):
    """Two `python -m flows.server start` at once in one workspace (as two stages that find no
    server): one server (Prefect's pid file names it, it is the only server process of this
    PREFECT_HOME and it holds the port), and both get its URL."""
    from flows import server

    home = tmp_path / ".prefect"

    def start_two(port: int) -> list[subprocess.CompletedProcess]:
        env = server_env(tmp_path, port)
        command = [sys.executable, "-m", "flows.server", "start"]
        starts = [
            subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        outs = [subprocess.CompletedProcess(command, 0, *p.communicate(timeout=300)) for p in starts]
        for out, process in zip(outs, starts, strict=True):
            out.returncode = process.returncode
        if all(out.returncode != 0 and port_taken(out.stderr) for out in outs):  # taken by a third
            raise PortTaken(outs[0].stderr)
        return outs

    try:
        outs = on_a_free_port(start_two)
        for out in outs:
            assert out.returncode == 0, out.stderr[-3000:]
        assert len({out.stdout.strip().splitlines()[-1] for out in outs}) == 1  # one URL
        pid = int((home / "server.pid").read_text())
        assert prefect_servers_of(home) == [pid]
        state = json.loads((home / "server.json").read_text())
        assert server.owns_listener({"pid": pid, **state}) is True
    finally:
        subprocess.run(
            [sys.executable, "-m", "flows.server", "stop"],
            cwd=ROOT,
            env=server_env(tmp_path, 0),
            capture_output=True,
            timeout=120,
        )
        for leftover in prefect_servers_of(home):  # a second server, if the lock failed
            with contextlib.suppress(OSError):
                os.kill(leftover, signal.SIGKILL)
    assert prefect_servers_of(home) == []
