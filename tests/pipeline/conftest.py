"""A throwaway copy of the project running the smoke params, with its own Prefect server.

The session fixture `pipeline_run` does what a user does from the Prefect UI: serve the
deployments (`python -m flows.serve`), trigger `zflora-pipeline/pipeline` through the API
with a parameter override, and wait. Later tests inspect what that run left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
T = TypeVar("T")


def free_port() -> int:
    """A port free now on 127.0.0.1, outside the kernel's ephemeral range.

    Outside that range the kernel never hands it out meanwhile (to a `bind(0)` or an
    outgoing connection). A process that binds it by number still can, before the server
    does: start servers with `on_a_free_port` or `start_server`, which try another port then.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(100 if low > 11000 else 0):
        port = random.randrange(10000, low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PortTaken(Exception):
    """A server found its port taken: another process bound it after `free_port` chose it."""


def port_taken(output: str) -> bool:
    """Whether a server's output says that it could not bind its port."""
    text = output.lower()
    return any(
        words in text
        for words in (
            "address already in use",
            "connection in use",
            "already in use",
            "is in use by",
            "did not come up as this workspace's",  # another process's server answered on that port
        )
    )


def on_a_free_port(start: Callable[[int], T], tries: int = 5) -> T:
    """`start(port)` on a port `free_port` chose; on another one while `start` raises PortTaken."""
    for attempt in range(tries):
        try:
            return start(free_port())
        except PortTaken:
            if attempt + 1 == tries:
                raise
    raise AssertionError("tries must be positive")


def start_server(
    command: list[str], url: str, ready: Callable[[str], bool], log: Path, timeout: float = 180, **popen
) -> subprocess.Popen:
    """Start a server process and wait until `ready(url)`: PortTaken if it exited saying its
    port was taken (then `on_a_free_port` tries another), AssertionError on any other failure."""
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, **popen)
    deadline = time.monotonic() + timeout
    while not ready(url):
        if server.poll() is not None or time.monotonic() > deadline:
            if popen.get("start_new_session"):
                with contextlib.suppress(OSError):
                    os.killpg(server.pid, signal.SIGKILL)
            stop_process(server, timeout=10)
            text = log.read_text()
            if port_taken(text):
                raise PortTaken(text[-500:])
            raise AssertionError(f"{' '.join(command)} did not come up on {url}:\n{text[-3000:]}")
        time.sleep(0.5)
    return server


def flows_server_start(env: dict[str, str], cwd: Path, port: int) -> str:
    """`python -m flows.server start` on `port`; its URL, or PortTaken if the port was taken."""
    out = subprocess.run(
        [sys.executable, "-m", "flows.server", "start"],
        cwd=cwd,
        env={**env, "ZFLORA_PREFECT_PORT": str(port)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if out.returncode != 0 and port_taken(out.stderr + out.stdout):
        raise PortTaken(out.stderr[-500:])
    assert out.returncode == 0, f"flows.server start exited {out.returncode}:\n{out.stderr[-3000:]}"
    return out.stdout.strip().splitlines()[-1]


def start_prefect_server(env: dict[str, str], cwd: Path) -> str:
    """This workspace's Prefect server on a free port, which becomes env's ZFLORA_PREFECT_PORT
    (for the stages and `flows.server stop` run with `env`); returns the server's URL."""
    port, url = on_a_free_port(lambda port: (port, flows_server_start(env, cwd, port)))
    env["ZFLORA_PREFECT_PORT"] = str(port)
    return url


def prefect_servers_of(home) -> list[int]:
    """Pids of Prefect server processes whose PREFECT_HOME is `home`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read()
            environ = open(f"/proc/{entry}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"prefect.server" in cmdline and f"PREFECT_HOME={home}".encode() in environ:
            found.append(int(entry))
    return found


@dataclass
class Project:
    root: Path
    env: dict[str, str]
    seconds: float = 0.0
    result: dict | None = None

    def run(
        self, *cmd: str, timeout: float = 600, check: bool = True, **kwargs
    ) -> subprocess.CompletedProcess:
        kwargs.setdefault("env", self.env)
        out = subprocess.run(
            list(cmd), cwd=self.root, capture_output=True, text=True, timeout=timeout, **kwargs
        )
        if check and out.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
            )
        return out


def wait_for_deployments(
    project: Project, serve: subprocess.Popen, env: dict[str, str] | None = None
) -> None:
    """Poll `prefect deployment ls` until `flows.serve` has published the pipeline deployment."""
    deadline = time.monotonic() + 180
    while (
        "zflora-pipeline/pipeline"
        not in project.run(
            str(BIN / "prefect"), "deployment", "ls", check=False, env=env or project.env
        ).stdout
    ):
        assert serve.poll() is None, (project.root / "serve.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "deployments were not served"
        time.sleep(1)


def stop_process(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()


def copy_project(dest: Path, params: str = "configs/smoke.yaml") -> Project:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        source = ROOT / name
        if source.is_file() and not name.startswith(("tests/", "reports/", "benchmarks/results")):
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    shutil.copy(ROOT / params, dest / "params.yaml")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "DVC_", "ZFLORA_"))
    }
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PREFECT_HOME=str(dest / ".prefect"),
        ZFLORA_PREFECT_PORT=str(free_port()),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PYTHONPATH=str(dest),
        GIT_AUTHOR_NAME="zflora tests",
        GIT_AUTHOR_EMAIL="tests@zflora.invalid",
        GIT_COMMITTER_NAME="zflora tests",
        GIT_COMMITTER_EMAIL="tests@zflora.invalid",
    )
    project = Project(dest, env)
    project.run("git", "init", "-q")
    project.run("git", "add", "-A")
    project.run("git", "commit", "-q", "-m", "project under test")
    return project


TRIGGER = """
import json, sys
from prefect.deployments import run_deployment
run = run_deployment("zflora-pipeline/pipeline", parameters={"set_params": {"evaluate.batch_size": 4}}, timeout=1500)
print(json.dumps({"state": run.state.type.value, "message": run.state.message}))
"""


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory):
    """Serve the deployments, trigger the pipeline through the Prefect API (as the UI does), wait."""
    project = copy_project(tmp_path_factory.mktemp("project"))
    url = start_prefect_server(project.env, project.root)
    # the server wants this workspace's auth string (flows/server.py); a UI user types it in once
    auth = (project.root / ".prefect" / "server.auth").read_text().strip()
    env = {**project.env, "PREFECT_API_URL": f"{url}/api", "PREFECT_API_AUTH_STRING": auth}
    project.env = env
    log = open(project.root / "serve.log", "w")
    serve = subprocess.Popen(
        [sys.executable, "-m", "flows.serve"], cwd=project.root, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_for_deployments(project, serve)
        start = time.perf_counter()
        out = project.run(sys.executable, "-c", TRIGGER, timeout=1800)
        project.seconds = time.perf_counter() - start
        project.result = json.loads(out.stdout.strip().splitlines()[-1])
        yield project
    finally:
        stop_process(serve)
        log.close()
        project.run(sys.executable, "-m", "flows.warm", "stop", check=False)
        subprocess.run(
            [sys.executable, "-m", "flows.server", "stop"],
            cwd=project.root,
            env=env,
            capture_output=True,
            timeout=60,
        )


@pytest.fixture
def project(pipeline_run, tmp_path):
    """A copy of the project `pipeline_run` built, sharing its Prefect server."""
    copy = tmp_path / "copy"
    shutil.copytree(pipeline_run.root, copy, ignore=shutil.ignore_patterns(".prefect", "serve.log"))
    project = Project(copy, {**pipeline_run.env, "PYTHONPATH": str(copy)})
    yield project
    project.run(sys.executable, "-m", "flows.warm", "stop", check=False)
