"""Concurrent runs in one workspace (docs/reliability.md, Concurrency): they wait, never collide.

`dvc` is a fake on PATH that records each call, so a test sees whether and when a run
reached DVC without running a stage.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .conftest import BIN, ROOT

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
