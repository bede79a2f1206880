"""The warm worker (flows/warm.py): it preloads every stage dvc.yaml runs, stages it runs
behave like stage processes, it serves only the code it imported, killing a stage process
kills the stage and what the stage started, and killing the worker kills the stages it runs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flows import warm

from .conftest import ROOT, Project


def status(project: Project) -> str:
    return project.run(sys.executable, "-m", "flows.warm", "status").stdout


def wait_for_worker(project: Project, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = status(project)
        if out.startswith("warm worker") and " match this shell" in out:
            return out
        time.sleep(1)
    raise AssertionError(f"no warm worker started: {out}")


def served(project: Project) -> int:
    return int(status(project).split(": ")[1].split()[0])


def running(project: Project) -> int:
    return int(status(project).split(", ")[1].split()[0])


def test_the_worker_preloads_every_stage_module_dvc_yaml_runs():
    """Read independently of warm.py's pattern: each cmd's module, as Python would run it."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    run = set()
    for stage in stages.values():
        words = stage.get("do", stage)["cmd"].split()
        module = words[words.index("-m") + 1]
        run.add(module if module != "flows" else f"flows.{words[words.index('-m') + 2]}")
    assert run == set(warm.stage_modules(ROOT / "dvc.yaml"))
    assert "flows.tune" in run  # once missing from a hand-written list: every tune stage ran cold


def test_a_declined_request_starts_no_second_worker(monkeypatch):
    """A worker that serves but declines (a module it does not run) is not joined by another."""
    import socket as socket_

    spawned = []
    monkeypatch.setattr(warm, "enabled", lambda: True)
    monkeypatch.setattr(warm, "spawn", lambda: spawned.append(1))
    for reason, spawns in (("bad", 0), ("stale", 1)):
        ours, theirs = socket_.socketpair()
        warm._send(theirs, {"status": "declined", "reason": reason})
        monkeypatch.setattr(warm, "_connect", lambda path, timeout=5, sock=ours: sock)
        warm.forward(["prepare", "--help"])
        assert len(spawned) == spawns, reason
        theirs.close()


@pytest.mark.slow
def test_a_stage_in_the_warm_worker_is_the_stage_in_its_own_process(project):
    local = project.run(
        sys.executable, "-m", "flows", "prepare", "--help", env={**project.env, "ZFLORA_WARM": "0"}
    )
    project.run(sys.executable, "-m", "flows", "prepare", "--help")  # starts the worker
    wait_for_worker(project)
    before = served(project)
    warm = project.run(sys.executable, "-m", "flows", "prepare", "--help")
    assert served(project) == before + 1
    assert warm.stdout == local.stdout
    # a user error: same exit status and one line on stderr
    bad = project.run(sys.executable, "-m", "flows", "prepare", "--task", "no-such-task", check=False)
    assert served(project) == before + 2
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "zflora: error:" in bad.stderr and "no-such-task" in bad.stderr
    # and a real stage, whose outputs match the ones its own process wrote
    out = project.root / "artifacts" / "data" / "embedded-math"
    reference = {p.name: p.read_bytes() for p in out.iterdir()}
    project.run(sys.executable, "-m", "flows", "prepare", "--task", "embedded-math")
    assert served(project) == before + 3
    assert {p.name: p.read_bytes() for p in out.iterdir()} == reference


@pytest.mark.slow
def test_edited_code_is_never_served_by_an_old_worker(project):
    project.run(sys.executable, "-m", "flows", "prepare", "--help")
    first = wait_for_worker(project).split()[3].rstrip(":")
    layout = project.root / "flows" / "layout.py"
    layout.write_text(layout.read_text() + "\n# edited\n")
    out = project.run(sys.executable, "-m", "flows", "prepare", "--help")  # declined: runs in its own process
    assert out.returncode == 0
    second = wait_for_worker(project).split()[3].rstrip(":")
    assert second != first  # the stale worker left; a fresh one imported the edited code


def alive(pid: int) -> bool:
    """Running (a zombie left for a parent that never reaps it counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


FAKE_GIT = """#!/bin/sh
# `git rev-parse` / `git status` for the stage's MLflow tags, leaving a subprocess behind in
# the stage's process group (as a data loader worker or a tool would)
sleep 600 </dev/null >/dev/null 2>&1 &
echo $! >> "{log}"
echo 0123456789abcdef0123456789abcdef01234567
"""


def started_subprocesses(project: Project) -> list[int]:
    log = project.root / "grandchildren.txt"
    return [int(line) for line in log.read_text().split()] if log.is_file() else []


def long_training(project: Project) -> subprocess.Popen:
    """Start a train stage that would run for hours, once it is inside training; returns its process.

    Its `git` is a fake that starts a long-lived subprocess: a grandchild of the stage."""
    fake_bin = project.root / "fake-bin"
    fake_bin.mkdir()
    (fake_bin / "git").write_text(FAKE_GIT.format(log=project.root / "grandchildren.txt"))
    (fake_bin / "git").chmod(0o755)
    project.env = {**project.env, "PATH": f"{fake_bin}{os.pathsep}{project.env['PATH']}"}
    path = project.root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["train"].update(max_steps=100_000, save_steps=100_000)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    project.run(sys.executable, "-m", "flows", "prepare", "--help")
    wait_for_worker(project)
    shutil.rmtree(project.root / "work", ignore_errors=True)
    started = project.root / "work" / "checkpoints" / "embedded-math" / "zflora" / "run.json"
    with open(project.root / "stage.err", "w") as err:  # a file: a full pipe would stall the stage
        stage = subprocess.Popen(
            [sys.executable, "-m", "flows", "train", "--task", "embedded-math", "--method", "zflora"],
            cwd=project.root,
            env=project.env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    deadline = time.monotonic() + 180
    while not (running(project) == 1 and started.is_file()):  # the child is in training
        if stage.poll() is not None or time.monotonic() > deadline:
            stage.kill()
            raise AssertionError(f"the stage did not start training: {status(project)} {stage_err(project)}")
        time.sleep(0.5)
    return stage


def stage_err(project: Project) -> str:
    return (project.root / "stage.err").read_text()


@pytest.mark.slow
def test_killing_the_stage_process_kills_the_stage_and_what_it_started(project):
    stage = long_training(project)
    grandchildren = started_subprocesses(project)
    assert grandchildren and all(alive(pid) for pid in grandchildren)
    stage.send_signal(signal.SIGKILL)
    stage.wait()
    deadline = time.monotonic() + 10
    while running(project) != 0 or any(alive(pid) for pid in grandchildren):
        assert time.monotonic() < deadline, (
            "the stage or its subprocess kept running after its process was killed"
        )
        time.sleep(0.2)


@pytest.mark.slow
def test_killing_the_worker_mid_stage_kills_the_stage(project):
    """SIGKILL to the worker: its child dies with it (PR_SET_PDEATHSIG), the stage process
    kills the child's process group and fails with one line; nothing keeps writing."""
    stage = long_training(project)
    info = warm.status(project.root.resolve())
    assert info is not None and len(info["children"]) == 1, info
    worker, child = info["pid"], info["children"][0]
    assert alive(child)
    os.kill(worker, signal.SIGKILL)
    try:
        code = stage.wait(timeout=60)
    except subprocess.TimeoutExpired:
        stage.kill()
        raise AssertionError("the stage process kept waiting for a dead worker") from None
    deadline = time.monotonic() + 30
    while alive(child):
        assert time.monotonic() < deadline, "the stage kept running after its worker was killed"
        time.sleep(0.2)
    assert code == 1
    assert "zflora: error: the warm worker stopped during this stage; rerun it" in stage_err(project)
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in started_subprocesses(project)):
        assert time.monotonic() < deadline, "a subprocess of the stage outlived it"
        time.sleep(0.2)
