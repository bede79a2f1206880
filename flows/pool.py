"""The DAG on a Prefect work pool: one child flow run per DVC stage, each in its worker's own workspace.

    python -m flows.pipeline --pool zflora [-S key=value ...] [--target STAGE ...]

DVC runs one stage at a time; this runs every out-of-date stage of dvc.yaml as a flow run
of the `zflora-stage/stage` deployment on the work pool, each as soon as the stages it
depends on have completed, so independent stages run at once (up to the workers' and the
pool's concurrency). DVC still versions and caches every stage:

- The coordinator (this process, the parent flow run) reads the stage graph and what is out
  of date from DVC (dvc.yaml, the params, `dvc status`) and submits the stages. It runs no
  stage itself.
- A worker runs a stage in its own workspace (`ZFLORA_WORKSPACE`, a git checkout no one
  else uses): the coordinator's commit and params, the outputs of the stage's upstream
  restored from the pool's DVC remote through DVC's run-cache, `dvc repro --single-item
  <stage>`, then its outputs and run-cache entry pushed back (`dvc push --run-cache`).
- At the end the coordinator pulls the run-cache and runs `dvc repro --pull` (with -S
  overrides: `dvc exp run`, so the run is a DVC experiment): every stage is restored from
  the run-cache, none runs, dvc.lock is complete, `dvc status` is clean.

Faults: a stage that fails ends the pipeline FAILED with one line naming it; no stage that
depends on it starts, the running ones finish. A worker that dies mid-stage stops sending
its flow run's heartbeats (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, set by `make cluster`): after
HEARTBEAT_DEADLINE_S the coordinator marks that run crashed and submits the stage again, to
a live worker (at once when the run's process was on this host and is gone). Rerunning a killed coordinator continues from what completed: finished
stages are in the run-cache and restore in seconds.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from zflora.errors import ZFLoRAError

from .stage import user_errors_fail

DEPLOYMENT = "zflora-stage/stage"
REMOTE = "zflora-pool"  # the DVC remote's name in each workspace's .dvc/config.local
POLL_S = 1.0
HEARTBEAT_DEADLINE_S = float(
    os.environ.get("ZFLORA_HEARTBEAT_DEADLINE_S", "100")
)  # 3 missed beats (30 s apart)
RETRIES = 2  # resubmissions of a stage whose worker died


# --------------------------------------------------------------------- the coordinator


BIN = Path(sys.executable).parent  # dvc, and the `python` of dvc.yaml's cmds: this environment's


def tool_env(env: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if env is None else env)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(cmd: list[str], cwd: Path | str | None = None, env: dict[str, str] | None = None) -> str:
    """Run a tool (dvc, git) with this environment's bin first on PATH; its output, or a
    ZFLoRAError with its last line."""
    out = subprocess.run(cmd, cwd=cwd, env=tool_env(env), capture_output=True, text=True)
    if out.returncode != 0:
        lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
        raise ZFLoRAError(f"`{' '.join(cmd[:4])}` failed: {lines[-1] if lines else out.returncode}")
    return out.stdout


def pool_settings() -> dict[str, str]:
    """The shared services a pool run needs, from the environment (`source .cluster/env`)."""
    tracking = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not tracking.startswith(("http://", "https://")):
        raise ZFLoRAError(
            f"a pool run logs to an MLflow tracking server, not {tracking or 'the local sqlite store'}: "
            "workers on several machines cannot share a file; `source .cluster/env` (make cluster) "
            "or set MLFLOW_TRACKING_URI=http://..."
        )
    remote = os.environ.get("ZFLORA_DVC_REMOTE")
    if not remote:
        raise ZFLoRAError(
            "a pool run passes stage outputs through a DVC remote: `source .cluster/env` (make cluster) "
            "or set ZFLORA_DVC_REMOTE to a folder, ssh:// or s3:// URL the workers can reach"
        )
    if not os.environ.get("PREFECT_API_URL"):
        raise ZFLoRAError(
            "a pool run needs the pool's Prefect server: `source .cluster/env` or set PREFECT_API_URL"
        )
    return {"remote": remote, "repo": os.environ.get("ZFLORA_GIT_REMOTE") or str(Path.cwd())}


def committed_code() -> str:
    """The commit workers check out; refuses uncommitted changes to tracked files (they would not see them)."""
    dirty = run(["git", "status", "--porcelain", "--untracked-files=no"]).strip()
    if dirty:
        lines = dirty.splitlines()
        more = ", ..." if len(lines) > 1 else ""
        raise ZFLoRAError(
            f"uncommitted changes to tracked files ({lines[0].strip()}{more}): "
            "workers run the committed code; commit them (or stash them) and run again"
        )
    return run(["git", "rev-parse", "HEAD"]).strip()


def apply_overrides(text: str, overrides: dict[str, str]) -> str:
    """params.yaml with `key=value` overrides set (values parsed as YAML, as `dvc exp run -S` does)."""
    if not overrides:
        return text
    import io

    from ruamel.yaml import YAML

    yaml = YAML()
    data = yaml.load(text)
    for key, value in overrides.items():
        *sections, last = key.split(".")
        node = data
        for section in sections:
            if section not in node or not isinstance(node[section], dict):
                raise ZFLoRAError(f"-S {key}: params.yaml has no section {section!r}")
            node = node[section]
        node[last] = YAML(typ="safe").load(value) if value else value
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


@dataclass
class Plan:
    """The stages to run, each with the stages it waits for (within the plan) and all it depends on."""

    waits: dict[str, set[str]] = field(default_factory=dict)
    upstream: dict[str, list[str]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)


def plan(targets: list[str] | None = None) -> Plan:
    """Out-of-date stages (what `dvc status` reports, and everything downstream of it), in order."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo() as repo:
        graph = repo.index.graph  # edges: stage -> the stages it depends on
        names = {stage: stage.addressing.rsplit(":", 1)[-1] for stage in graph.nodes}
        changed = {name.split(":")[-1] for name in repo.status()}
        stale = {stage for stage in graph.nodes if names[stage] in changed}
        for stage in list(stale):
            stale |= nx.ancestors(graph, stage)  # what depends on it
        if targets:
            wanted = {
                stage
                for stage in graph.nodes
                if names[stage] in targets or names[stage].split("@")[0] in targets
            }
            if not wanted:
                raise ZFLoRAError(
                    f"--target {targets}: no such stage in dvc.yaml (dvc stage list shows them)"
                )
            scope = set(wanted)
            for stage in wanted:
                scope |= nx.descendants(graph, stage)
            stale &= scope
        result = Plan()
        for stage in reversed(list(nx.topological_sort(graph))):
            if stage not in stale:
                continue
            name = names[stage]
            deps = nx.descendants(graph, stage)
            result.order.append(name)
            result.waits[name] = {names[d] for d in graph.successors(stage) if d in stale}
            ordered = [names[d] for d in reversed(list(nx.topological_sort(graph))) if d in deps]
            result.upstream[name] = ordered
        return result


def ensure_deployment(pool: str) -> None:
    """The stage deployment on `pool` (idempotent)."""
    from prefect.types.entrypoint import EntrypointType

    stage_flow.to_deployment(
        name="stage",
        description="One DVC stage in a worker's own workspace (flows/pool.py)",
        tags=["zflora", "dvc"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    ).apply(work_pool_name=pool)


def _last_heartbeat(client: Any, run_id: Any) -> float | None:
    """Seconds since the flow run's last heartbeat event (None: none seen)."""
    from datetime import datetime, timedelta, timezone

    now = datetime.now(timezone.utc)
    body = {
        "filter": {
            "event": {"name": ["prefect.flow-run.heartbeat"]},
            "resource": {"id": [f"prefect.flow-run.{run_id}"]},
            "occurred": {"since": (now - timedelta(hours=6)).isoformat(), "until": now.isoformat()},
            "order": "DESC",
        },
        "limit": 1,
    }
    response = client.request("POST", "/events/filter", json=body)
    events = response.json().get("events", [])
    if not events:
        return None
    occurred = datetime.fromisoformat(events[0]["occurred"].replace("Z", "+00:00"))
    return (now - occurred).total_seconds()


def _running(pid: int) -> bool:
    """Whether a process on this host runs: exists and is not a zombie (killed with its
    parent, it waits for an init that may never reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _gone(client: Any, flow_run: Any) -> str | None:
    """Why a RUNNING flow run's worker is gone, or None while it lives: its process, when it ran on
    this host and has exited; else no heartbeat for HEARTBEAT_DEADLINE_S."""
    # where the stage runs: the tags it set itself (`_where_i_run`); else the infrastructure
    # id, which names the host only for some worker types ("host:pid")
    where = dict(tag.split(":", 1) for tag in flow_run.tags if tag.startswith(("host:", "pid:")))
    if "pid" not in where:
        where["host"], _, where["pid"] = (flow_run.infrastructure_pid or "").rpartition(":")
    host, pid = where.get("host"), where["pid"]
    if host == socket.gethostname() and pid.isdigit() and not _running(int(pid)):
        return f"its process {pid} on this host is gone"
    silent = _last_heartbeat(client, flow_run.id)
    started = flow_run.start_time.timestamp() if flow_run.start_time else time.time()
    quiet_for = silent if silent is not None else time.time() - started
    if quiet_for > HEARTBEAT_DEADLINE_S:
        return f"no heartbeat for {quiet_for:.0f} s: its worker is gone"
    return None


def coordinate(
    pool: str,
    overrides: dict[str, str],
    targets: list[str] | None,
    experiment: str | None,
    logger: Any,
) -> dict[str, Any]:
    """Run the out-of-date stages on `pool`; then restore every output here from the run-cache."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Crashed

    services = pool_settings()
    commit = committed_code()
    params_path = Path("params.yaml")
    params_text = apply_overrides(params_path.read_text(), overrides)
    if overrides:
        params_path.write_text(params_text)  # as `dvc exp run -S` does: the run's params, here too
    todo = plan(targets)
    # what is up to date here already (run by `dvc repro` in this workspace) reaches the workers too
    run(["dvc", "remote", "add", "--local", "--force", REMOTE, services["remote"]])
    run(["dvc", "push", "--run-cache", "-r", REMOTE])
    ensure_deployment(pool)
    label = experiment or (f"exp-{commit[:8]}" if overrides else "main")
    tags = ["zflora", f"commit:{commit[:12]}", f"experiment:{label}"]
    logger.info(
        f"{len(todo.order)} stage(s) to run on pool {pool!r} at {commit[:12]}: {', '.join(todo.order) or '-'}"
    )
    done: set[str] = set()
    running: dict[str, Any] = {}  # stage -> flow run
    running_ids: dict[str, Any] = {}  # stage -> its last flow run's id
    attempts: dict[str, int] = {}
    timing: dict[str, dict[str, float]] = {}
    failed: tuple[str, str] | None = None
    start = time.perf_counter()
    with get_client(sync_client=True) as client:
        while True:
            if failed is None:
                for name in todo.order:
                    if name in done or name in running or not todo.waits[name] <= done:
                        continue
                    attempts[name] = attempts.get(name, 0) + 1
                    running[name] = run_deployment(
                        DEPLOYMENT,
                        parameters={
                            "stage": name,
                            "upstream": todo.upstream[name],
                            "repo": services["repo"],
                            "commit": commit,
                            "params_text": params_text,
                            "remote": services["remote"],
                        },
                        flow_run_name=name if attempts[name] == 1 else f"{name} (attempt {attempts[name]})",
                        tags=[*tags, f"stage:{name.split('@')[0]}"],
                        timeout=0,
                        as_subflow=True,
                    )
                    running_ids[name] = running[name].id
                    timing[name] = {"submitted": time.perf_counter() - start}
                    logger.info(f"submitted {name}")
            if not running:
                break
            time.sleep(POLL_S)
            for name, flow_run in list(running.items()):
                current = client.read_flow_run(flow_run.id)
                state = current.state
                if state.is_completed():
                    done.add(name)
                    del running[name]
                    timing[name]["finished"] = time.perf_counter() - start
                    logger.info(f"{name}: completed")
                elif state.is_crashed() or state.is_cancelled():
                    del running[name]
                    if attempts[name] > RETRIES:
                        failed = failed or (name, f"crashed {attempts[name]} times ({state.message})")
                    else:
                        logger.warning(
                            f"{name}: {state.type.value.lower()} ({state.message}); submitting it again"
                        )
                elif state.is_failed():
                    del running[name]
                    failed = failed or (name, (state.message or "failed").splitlines()[0])
                    logger.error(f"{name}: {failed[1]}; no stage that depends on it will start")
                elif state.is_running():
                    gone = _gone(client, current)
                    if gone:  # not forced: a run that completed meanwhile stays completed
                        client.set_flow_run_state(flow_run.id, Crashed(message=gone), force=False)
        if failed is None:
            _worker_steps(client, running_ids, timing, start)
    if failed is not None:
        raise ZFLoRAError(f"stage {failed[0]} failed: {failed[1]}")
    finish = time.perf_counter()
    restore(services["remote"], overrides or {}, experiment)
    result = {
        "stages": todo.order,
        "commit": commit,
        "seconds": round(time.perf_counter() - start, 1),
        "restore_seconds": round(time.perf_counter() - finish, 1),
        "timing": timing,
    }
    SUMMARY.parent.mkdir(parents=True, exist_ok=True)
    SUMMARY.write_text(json.dumps(result, indent=2) + "\n")
    logger.info(overhead_line(result))
    return result


SUMMARY = Path(".dvc") / "tmp" / "zflora-pool-run.json"  # the last pool run's timing (benchmarks read it)


def _worker_steps(
    client: Any, runs: dict[str, Any], timing: dict[str, dict[str, float]], start: float
) -> None:
    """Each stage's steps on its worker (its `stage-timing` artifact) and when it started."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    by_id = {str(run_id): name for name, run_id in runs.items()}
    artifacts = client.read_artifacts(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(runs.values())))
    )
    for artifact in artifacts:
        name = by_id.get(str(artifact.flow_run_id))
        if name and artifact.key == "stage-timing":
            rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
            timing[name]["worker"] = {row["step"]: row["seconds"] for row in rows}
    for name, run_id in runs.items():
        started = client.read_flow_run(run_id).start_time
        if started is not None:
            timing[name]["started"] = started.timestamp() - time.time() + (time.perf_counter() - start)


def overhead_line(result: dict[str, Any]) -> str:
    """The coordinator's and workers' cost per stage, as medians over the run's stages."""
    import statistics

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 2) if values else float("nan")

    timing = result["timing"].values()
    wait = [t["started"] - t["submitted"] for t in timing if "started" in t]
    steps = {
        step: median([t["worker"][step] for t in timing if "worker" in t])
        for step in ("checkout", "pull", "run", "push")
    }
    return (
        f"{len(result['stages'])} stages in {result['seconds']} s; per stage (median): submit to start {median(wait)} s, "
        f"worker checkout {steps['checkout']} s, pull {steps['pull']} s, run {steps['run']} s, push {steps['push']} s; "
        f"final restore {result['restore_seconds']} s"
    )


def restore(remote: str, overrides: dict[str, str], experiment: str | None) -> None:
    """Every output here from the pool's run-cache: no stage runs (ZFLORA_RESTORE_ONLY refuses one)."""
    previous = subprocess.run(
        ["dvc", "config", "--local", "core.remote"], capture_output=True, text=True, env=tool_env()
    ).stdout.strip()
    run(["dvc", "config", "--local", "core.remote", REMOTE])
    env = {**os.environ, "ZFLORA_RESTORE_ONLY": "1"}
    try:
        run(["dvc", "pull", "--run-cache", "--allow-missing", "-r", REMOTE], env=env)
        if overrides or experiment:
            cmd = [
                "dvc",
                "exp",
                "run",
                "--pull",
                *sum((["-S", f"{k}={v}"] for k, v in overrides.items()), []),
            ]
            run([*cmd, *(["--name", experiment] if experiment else [])], env=env)
        else:
            run(["dvc", "repro", "--pull"], env=env)
    finally:
        if previous:
            run(["dvc", "config", "--local", "core.remote", previous])
        else:
            subprocess.run(
                ["dvc", "config", "--local", "--unset", "core.remote"], capture_output=True, env=tool_env()
            )


# ------------------------------------------------------------------------ the worker


def _where_i_run() -> None:
    """Tag this flow run with its host and process, so a coordinator on the same host sees at
    once when the process is gone (a process worker's infrastructure id is a bare pid)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run as current

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(current.id)
        tags = [t for t in run.tags if not t.startswith(("host:", "pid:"))]
        client.update_flow_run(current.id, tags=[*tags, f"host:{socket.gethostname()}", f"pid:{os.getpid()}"])


@flow(name="zflora-stage", log_prints=True)
@user_errors_fail
def stage_flow(
    stage: str, upstream: list[str], repo: str, commit: str, params_text: str, remote: str
) -> dict:
    """One DVC stage in this worker's workspace; returns how long each step took."""
    logger = get_run_logger()
    _where_i_run()
    workspace = Path(os.environ.get("ZFLORA_WORKSPACE") or "")
    if not workspace.is_absolute():
        raise ZFLoRAError(
            "this worker has no workspace of its own: start it with ZFLORA_WORKSPACE=<folder> (make cluster does)"
        )
    workspace.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def step(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 2)
        clock = now

    env = {**os.environ, "PYTHONPATH": str(workspace), "ZFLORA_PREFECT_MODE": "off"}
    env.pop("ZFLORA_RESTORE_ONLY", None)
    if not (workspace / ".git").exists():
        run(["git", "init", "-q", str(workspace)])
    run(["git", "fetch", "-q", repo, commit], cwd=workspace)
    run(["git", "checkout", "-q", "--force", "--detach", commit], cwd=workspace)
    run(
        ["git", "clean", "-q", "-ffdx", "-e", ".dvc/cache", "-e", ".dvc/config.local", "-e", ".dvc/tmp"],
        cwd=workspace,
    )
    (workspace / "params.yaml").write_text(params_text)
    run(["dvc", "remote", "add", "--local", "--force", "--default", REMOTE, remote], cwd=workspace)
    step("checkout")
    run(["dvc", "pull", "--run-cache", "--allow-missing", "-r", REMOTE], cwd=workspace, env=env)
    if upstream:  # every upstream output from the run-cache: refuse to run any of them here
        run(["dvc", "repro", "--pull", *upstream], cwd=workspace, env={**env, "ZFLORA_RESTORE_ONLY": "1"})
    step("pull")
    logger.info(f"running {stage} in {workspace}")
    process = subprocess.Popen(
        ["dvc", "repro", "--single-item", stage],
        cwd=workspace,
        env=tool_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    tail: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        line = line.rstrip()
        if line and "\r" not in line:
            logger.info(line)
            tail = (tail + [line])[-30:]
    if process.wait() != 0:
        reason = next((line for line in reversed(tail) if "error" in line.lower()), tail[-1] if tail else "")
        raise ZFLoRAError(f"{stage}: {reason.removeprefix('zflora: error: ')}")
    step("run")
    run(["dvc", "push", "--run-cache", "-r", REMOTE], cwd=workspace, env=env)
    step("push")
    from prefect.artifacts import create_table_artifact

    worker = os.environ.get("ZFLORA_WORKER_NAME", "")
    create_table_artifact(  # shown in the UI, and read back by the coordinator for its summary
        table=[{"step": name, "seconds": value} for name, value in seconds.items()],
        key="stage-timing",
        description=f"{stage} on worker {worker or '?'}: seconds per step",
    )
    return {"stage": stage, "seconds": seconds, "worker": worker}
