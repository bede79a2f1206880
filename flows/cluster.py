"""Everything a pool run needs, on this machine and on loopback only, with the tools' own commands.

    make cluster WORKERS=2        # python -m flows.cluster up --workers 2
    source .cluster/env           # PREFECT_API_URL + auth string, MLFLOW_TRACKING_URI + login, ZFLORA_DVC_REMOTE
    python -m flows.pipeline --pool zflora
    make cluster-status           # what runs
    make cluster-down             # stop all of it

What `up` starts (each under `.cluster/`, or ZFLORA_CLUSTER_DIR):
- PostgreSQL (Debian's server: `initdb`, `pg_ctl` from /usr/lib/postgresql/<version>/bin) on a
  data folder of its own, on 127.0.0.1 with password (scram-sha-256) auth; as root, which
  it refuses to run as, it runs as the `postgres` system user on a folder that user owns;
- the Prefect server on it (`prefect server start --background`, the database in
  PREFECT_API_DATABASE_CONNECTION_URL, its auth string, CSRF and CORS: flows/server.py);
- the MLflow tracking server on it (`mlflow server --backend-store-uri postgresql://...`,
  artifacts in `.cluster/mlartifacts`, MLflow's basic-auth app: flows/mlflow_server.py);
- the work pool (`prefect work-pool create --type process`), a DVC remote folder that
  carries stage outputs and run-cache entries between workspaces, and N workers
  (`prefect worker start --pool ... --limit 1`), each with a workspace of its own.
Passwords and the auth string are generated and kept in files only this user can read.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from zflora.errors import ZFLoRAError

from . import mlflow_server, server
from .private import private_folder, read_private, write_private

POOL = "zflora"
HOST = "127.0.0.1"
IS_ROOT = os.getuid() == 0


def cluster_dir() -> Path:
    return Path(os.environ.get("ZFLORA_CLUSTER_DIR") or ".cluster").resolve()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _state_path() -> Path:
    return cluster_dir() / "state.json"


def read_state() -> dict:
    try:
        return json.loads(_state_path().read_text())
    except (OSError, ValueError):
        return {}


def _write_state(state: dict) -> None:
    write_private(_state_path(), json.dumps(state, indent=2))


def _secret(name: str) -> str:
    """A generated secret kept in `.cluster/secrets/<name>` (0600), the same on every `up`."""
    folder = private_folder(cluster_dir() / "secrets")
    text = (read_private(folder / name) or "").strip()
    if len(text) < 24:
        text = secrets.token_urlsafe(24)
        write_private(folder / name, text + "\n")
    return text


# --------------------------------------------------------------------------- PostgreSQL


def postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not found:
        raise ZFLoRAError(
            "no PostgreSQL server found (/usr/lib/postgresql/<version>/bin/pg_ctl); "
            "install Debian's postgresql package, or point the pool at your own servers (docs/pipeline.md)"
        )
    return found[-1].parent


def _as_postgres(*cmd: str, **kwargs) -> subprocess.CompletedProcess:
    """Run a PostgreSQL command as the postgres system user when we are root (initdb refuses root)."""
    full = ["runuser", "-u", "postgres", "--", *cmd] if IS_ROOT else list(cmd)
    return subprocess.run(full, capture_output=True, text=True, **kwargs)


def _check(out: subprocess.CompletedProcess, what: str) -> None:
    if out.returncode != 0:
        lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
        raise ZFLoRAError(f"{what} failed: {lines[-1] if lines else out.returncode}")


def start_postgres(state: dict) -> dict:
    folder = cluster_dir() / "postgres"
    data, sockets = folder / "data", folder / "run"
    password = _secret("postgres")
    bin_dir = postgres_bin()
    if IS_ROOT:  # the postgres user must reach its folder: every parent has to be searchable
        for parent in folder.parents:
            if parent.exists() and not parent.stat().st_mode & 0o001:
                raise ZFLoRAError(
                    f"PostgreSQL runs as the postgres user, which cannot enter {parent}; "
                    "put the cluster elsewhere: ZFLORA_CLUSTER_DIR=/srv/zflora-cluster make cluster"
                )
    if not (data / "PG_VERSION").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        sockets.mkdir(exist_ok=True)
        pwfile = folder / "initdb.pw"
        pwfile.write_text(password + "\n")
        if IS_ROOT:
            shutil.chown(folder, "postgres", "postgres")
            shutil.chown(sockets, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        os.chmod(folder, 0o700)
        os.chmod(pwfile, 0o600)
        try:
            out = _as_postgres(
                str(bin_dir / "initdb"), "-D", str(data), "-U", "zflora", "--auth=scram-sha-256",
                f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C.UTF-8",
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        _check(out, "initdb")
    port = state.get("postgres_port") or _free_port()
    status = _as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "status")
    if status.returncode != 0:
        options = f"-c listen_addresses={HOST} -p {port} -c unix_socket_directories={sockets}"
        out = _as_postgres(
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(folder / "server.log"),
            "-w",
            "start",
        )
        _check(out, "pg_ctl start")
    env = {**os.environ, "PGPASSWORD": password}
    for database in ("prefect", "mlflow"):
        out = subprocess.run(
            [str(bin_dir / "psql"), "-h", HOST, "-p", str(port), "-U", "zflora", "-d", "postgres", "-tAc",
             f"SELECT 1 FROM pg_database WHERE datname = '{database}'"],
            capture_output=True, text=True, env=env,
        )  # fmt: skip
        _check(out, "psql")
        if out.stdout.strip() != "1":
            _check(
                subprocess.run(
                    [str(bin_dir / "createdb"), "-h", HOST, "-p", str(port), "-U", "zflora", database],
                    capture_output=True,
                    text=True,
                    env=env,
                ),  # fmt: skip
                f"createdb {database}",
            )
    return {"postgres_port": port, "postgres_url": f"zflora:{password}@{HOST}:{port}"}


def stop_postgres() -> bool:
    data = cluster_dir() / "postgres" / "data"
    if not (data / "PG_VERSION").is_file():
        return False
    out = _as_postgres(str(postgres_bin() / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    return out.returncode == 0


# ------------------------------------------------------------------- Prefect and MLflow


@contextlib.contextmanager
def _prefect_home():
    saved = {
        k: os.environ.get(k)
        for k in ("PREFECT_HOME", "ZFLORA_PREFECT_PORT", "PREFECT_API_URL", "PREFECT_API_AUTH_STRING")
    }
    os.environ["PREFECT_HOME"] = str(cluster_dir() / "prefect")
    for key in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING"):
        os.environ.pop(key, None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def start_prefect(state: dict) -> dict:
    with _prefect_home():
        os.environ["ZFLORA_PREFECT_PORT"] = str(state.get("prefect_port") or _free_port())
        url = server.start(
            quiet=True,
            extra_env={
                "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://{state['postgres_url']}/prefect"
            },
        )
        auth = server.auth_string(create=False)
    return {
        "prefect_port": int(url.rsplit(":", 1)[1].split("/")[0]),
        "prefect_url": url,
        "prefect_auth": auth,
    }


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return (
        Path(f"/proc/{pid}").exists()
        and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]
    )


def _spawn(name: str, cmd: list[str], env: dict[str, str], cwd: Path) -> int:
    logs = cluster_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as log:
        process = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process.pid


def _wait_http(url: str, name: str, pid: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except urllib.error.HTTPError:
            return  # it answers (401 without the login)
        except (urllib.error.URLError, OSError):
            if not _alive(pid):
                break
            time.sleep(1)
    raise ZFLoRAError(f"the {name} did not come up on {url} (see {cluster_dir() / 'logs' / (name + '.log')})")


def start_mlflow(state: dict) -> dict:
    if _alive(state.get("mlflow_pid")):
        return {}
    port = state.get("mlflow_port") or _free_port()
    artifacts = cluster_dir() / "mlartifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **mlflow_server.auth_env(cluster_dir() / "mlflow")}
    cmd = mlflow_server.server_command(
        "server",
        HOST,
        port,
        "--backend-store-uri",
        f"postgresql+psycopg2://{state['postgres_url']}/mlflow",
        "--artifacts-destination",
        str(artifacts),
    )
    pid = _spawn("mlflow", cmd, env, cluster_dir())
    _wait_http(f"http://{HOST}:{port}/health", "mlflow", pid)
    return {"mlflow_port": port, "mlflow_pid": pid, "mlflow_url": f"http://{HOST}:{port}"}


def client_env(state: dict) -> dict[str, str]:
    """What a client of the cluster sets: the contents of `.cluster/env`."""
    login = mlflow_server.read_login(cluster_dir() / "mlflow") or {}
    return {
        "PREFECT_API_URL": state["prefect_url"],
        "PREFECT_API_AUTH_STRING": state["prefect_auth"],
        "MLFLOW_TRACKING_URI": state["mlflow_url"],
        **login,
        "ZFLORA_DVC_REMOTE": str(cluster_dir() / "dvc-remote"),
        "ZFLORA_POOL": POOL,
    }


def _prefect_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args], env=env, capture_output=True, text=True, timeout=180
    )


def start_workers(state: dict, workers: int, env: dict[str, str]) -> dict:
    out = _prefect_cli("work-pool", "create", POOL, "--type", "process", "--overwrite", env=env)
    _check(out, f"prefect work-pool create {POOL}")
    pids = dict(state.get("workers") or {})
    for index in range(1, workers + 1):
        name = f"w{index}"
        if _alive(pids.get(name)):
            continue
        workspace = cluster_dir() / "workers" / name
        workspace.mkdir(parents=True, exist_ok=True)
        worker_env = {
            **env,
            "ZFLORA_WORKSPACE": str(workspace),
            "ZFLORA_WORKER_NAME": name,
            "PREFECT_HOME": str(cluster_dir() / "workers" / f".{name}.prefect"),
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": os.environ.get(
                "PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30"
            ),  # Prefect's minimum
            # how often a worker asks for work (Prefect's default, 10 s, is most of a small stage's wait)
            "PREFECT_WORKER_QUERY_SECONDS": os.environ.get("PREFECT_WORKER_QUERY_SECONDS", "1"),
        }
        cmd = [
            sys.executable,
            "-m",
            "prefect",
            "worker",
            "start",
            "--pool",
            POOL,
            "--name",
            name,
            "--limit",
            "1",
            "--type",
            "process",
        ]
        pids[name] = _spawn(f"worker-{name}", cmd, worker_env, workspace)
    for name in list(pids):
        if int(name[1:]) > workers and not _alive(pids[name]):
            del pids[name]
    return {"workers": pids}


def up(workers: int) -> dict:
    folder = cluster_dir()
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o755)  # searchable, so the postgres user reaches its folder
    (folder / "dvc-remote").mkdir(exist_ok=True)
    state = read_state()
    state.update(start_postgres(state))
    _write_state(state)
    state.update(start_prefect(state))
    _write_state(state)
    state.update(start_mlflow(state))
    _write_state(state)
    env = {**os.environ, **client_env(state)}
    state.update(start_workers(state, workers, env))
    _write_state(state)
    write_private(
        folder / "env",
        "# source this file to use the cluster (python -m flows.pipeline --pool zflora)\n"
        + "".join(f"export {k}={shlex.quote(v)}\n" for k, v in client_env(state).items()),
    )
    return state


def _terminate(pids: list[int], grace_s: float = 20.0) -> None:
    """SIGTERM to each process group; SIGKILL to those still alive after `grace_s` (a worker
    can hang retrying a server that is already gone)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)


def down() -> list[str]:
    state = read_state()
    stopped, pids = [], []
    for name, pid in (state.get("workers") or {}).items():
        if _alive(pid):
            pids.append(pid)
            stopped.append(f"worker {name}")
    if _alive(state.get("mlflow_pid")):
        pids.append(state["mlflow_pid"])
        stopped.append("mlflow")
    _terminate(pids)
    with _prefect_home():
        if server.stop():
            stopped.append("prefect")
    if stop_postgres():
        stopped.append("postgres")
    state.pop("workers", None)
    state.pop("mlflow_pid", None)
    if _state_path().exists():
        _write_state(state)
    return stopped


def status() -> dict[str, str]:
    state = read_state()
    if not state:
        return {"cluster": f"not started ({cluster_dir()})"}
    report = {}
    data = cluster_dir() / "postgres" / "data"
    pg = _as_postgres(str(postgres_bin() / "pg_ctl"), "-D", str(data), "status") if data.exists() else None
    report["postgres"] = (
        f"running on {HOST}:{state.get('postgres_port')}" if pg and pg.returncode == 0 else "stopped"
    )
    with _prefect_home():
        ours = server.is_ours(server.recorded(), server.auth_string(create=False))
    report["prefect"] = f"running at {state.get('prefect_url')}" if ours else "stopped"
    report["mlflow"] = (
        f"running at {state.get('mlflow_url')}" if _alive(state.get("mlflow_pid")) else "stopped"
    )
    for name, pid in sorted((state.get("workers") or {}).items()):
        report[f"worker {name}"] = (
            f"running (pid {pid}, workspace {cluster_dir() / 'workers' / name})" if _alive(pid) else "stopped"
        )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the servers and workers of a pool run, on this machine")
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--workers", type=int, default=2, help="workers to start (default 2)")
    args = parser.parse_args(argv)
    try:
        if args.action == "up":
            if args.workers < 1:
                raise ZFLoRAError(f"--workers must be at least 1, got {args.workers}")
            state = up(args.workers)
            print(f"cluster up: Prefect {state['prefect_url'].removesuffix('/api')}, MLflow {state['mlflow_url']}, "
                  f"pool {POOL!r} with {len(state['workers'])} workers")  # fmt: skip
            print(f"use it: source {cluster_dir() / 'env'} && python -m flows.pipeline --pool {POOL}")
        elif args.action == "down":
            stopped = down()
            print("stopped " + ", ".join(stopped) if stopped else "nothing of the cluster was running")
        else:
            for part, text in status().items():
                print(f"{part:10} {text}")
    except ZFLoRAError as e:
        print(f"zflora: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
