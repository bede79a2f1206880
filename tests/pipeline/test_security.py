"""Attacks on the pipeline's servers and on the warm worker (docs/reliability.md, "Security").

Another user is simulated in two ways, since these tests usually run as root:
- files and directories "planted by another owner" are chown'ed to uid 4242 (as root; as
  another user, a directory open to everyone stands in for it, and the chown cases skip);
- a process of another user at the other end of a Unix socket is a fake peer-credential
  function: `flows.warm.peer_uid` is patched to return a uid that is not ours.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .conftest import ROOT, copy_project, start_prefect_server, stop_process, wait_for_deployments

OTHER_UID = 4242
IS_ROOT = os.getuid() == 0


# ----------------------------------------------------------------------------- helpers


@pytest.fixture
def short_tmp(monkeypatch):
    """A short temp folder (Unix socket paths must stay under 108 bytes) used as the system's."""
    path = tempfile.mkdtemp(prefix="zfs", dir="/tmp")
    monkeypatch.setattr(tempfile, "tempdir", path)
    monkeypatch.setenv("ZFLORA_WARM", "1")
    monkeypatch.delenv("RANK", raising=False)
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


class Listener:
    """A Unix socket planted at `path` that records whatever a client sends it."""

    def __init__(self, path: str):
        self.received = b""
        self.connections = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        self.sock.settimeout(10)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        self.connections += 1
        conn.settimeout(2)
        try:
            while chunk := conn.recv(65536):
                self.received += chunk
        except OSError:
            pass
        conn.close()

    def close(self) -> None:
        self.sock.close()
        self.thread.join(timeout=15)


def plant_as_other_owner(path: str, top: Path) -> None:
    """Make `path` and its folders below `top` look like another user's."""
    if IS_ROOT:
        while Path(path) != top:
            os.chown(path, OTHER_UID, OTHER_UID, follow_symlinks=False)
            path = os.path.dirname(path)
    else:  # cannot give files away: a folder open to everyone is as untrustworthy
        os.chmod(os.path.dirname(path), 0o777)


class Spawned:
    def __init__(self):
        self.calls: list = []

    def __call__(self, *args, **kwargs):
        self.calls.append(args)
        raise OSError("no worker in this test")


# ------------------------------------------------------------- the warm worker's socket


def test_a_socket_served_by_another_user_gets_nothing(short_tmp, monkeypatch, capsys):
    """The client checks the listener's uid (SO_PEERCRED) before sending its environment."""
    from flows import warm

    monkeypatch.setenv("ZFLORA_TEST_SECRET", "token-that-must-not-leak")
    path = warm.socket_path()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    listener = Listener(path)
    monkeypatch.setattr(warm, "peer_uid", lambda sock: os.getuid() + OTHER_UID, raising=False)
    spawned = Spawned()
    monkeypatch.setattr(subprocess, "Popen", spawned)
    try:
        warm.forward(["prepare"])  # returns: the stage would run in its own process
    finally:
        listener.close()
    assert b"token-that-must-not-leak" not in listener.received
    assert listener.received == b""
    assert "another user" in capsys.readouterr().err


def test_the_worker_serves_no_connection_of_another_user(monkeypatch):
    """The worker checks the client's uid before reading its request or forking."""
    from flows import warm

    forks = []

    def fork():
        forks.append(1)
        raise AssertionError("the worker forked a stage for another user")

    monkeypatch.setattr(os, "fork", fork)
    worker_end, client_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    request = {
        "stamp": "S",
        "module": "flows.prepare",
        "argv": ["prepare", "--help"],
        "cwd": os.getcwd(),
        "env": {},
    }
    warm._send(client_end, request, [0, 1, 2])
    # control: the same request from this user gets past the check (then declined: stamp differs)
    same_user = warm._accept(worker_end, "another stamp", worker_end, {}, {"served": 0}, {})
    assert same_user == "stale"
    worker_end, client_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    warm._send(client_end, request, [0, 1, 2])
    monkeypatch.setattr(warm, "peer_uid", lambda sock: os.getuid() + OTHER_UID, raising=False)
    verdict = warm._accept(worker_end, "S", worker_end, {}, {"served": 0}, {})
    assert not isinstance(verdict, int) and forks == []
    client_end.settimeout(5)
    try:
        answer = client_end.recv(100)
    except ConnectionResetError:  # closed with the request unread
        answer = b""
    assert answer == b""  # closed without a word, let alone an exit status


def test_a_socket_folder_planted_by_another_owner_is_not_used(short_tmp, monkeypatch, capsys):
    from flows import warm

    monkeypatch.setenv("ZFLORA_TEST_SECRET", "token-that-must-not-leak")
    path = warm.socket_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    listener = Listener(path)
    plant_as_other_owner(path, short_tmp)
    spawned = Spawned()
    monkeypatch.setattr(subprocess, "Popen", spawned)
    try:
        warm.forward(["prepare"])
    finally:
        listener.close()
    assert listener.received == b"" and listener.connections == 0
    assert spawned.calls == []  # no worker is started that could not listen there anyway
    err = capsys.readouterr().err
    assert "not a directory private to this user" in err and "ZFLORA_WARM=0" in err


@pytest.mark.parametrize("planted", ["symlink", "other-owner"])
def test_a_lock_file_planted_in_the_socket_folder_is_not_used(short_tmp, monkeypatch, planted):
    from flows import warm

    lock = warm.socket_path() + ".lock"
    os.makedirs(os.path.dirname(lock), mode=0o700, exist_ok=True)
    victim = short_tmp / "victim.txt"
    victim.write_text("precious")
    if planted == "symlink":
        os.symlink(victim, lock)
    else:
        if not IS_ROOT:
            pytest.skip("giving a file to another owner needs root")
        Path(lock).write_text("")
        os.chown(lock, OTHER_UID, OTHER_UID)
    spawned = Spawned()
    monkeypatch.setattr(subprocess, "Popen", spawned)
    warm.spawn()
    assert victim.read_text() == "precious"  # never truncated through the link
    assert spawned.calls == []


def test_the_socket_folder_is_private(short_tmp):
    from flows import warm

    folder = warm.checked_dir()
    st = os.lstat(folder)
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and st.st_mode & 0o077 == 0
    assert os.path.dirname(warm.socket_path()) == folder


def test_the_stamp_survives_a_file_vanishing_mid_scan(monkeypatch):
    from flows import warm

    before = warm.stamp()
    real_stat = os.stat

    def vanishing(path, *args, **kwargs):
        if os.fspath(path).endswith(os.path.join("flows", "layout.py")):
            raise FileNotFoundError(2, "No such file or directory", os.fspath(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", vanishing)
    during = warm.stamp()
    assert during != before  # a worker that imported the file does not match a scan without it


# ------------------------------------------------------------- the Prefect server


MIMIC = """
import http.server, sys
log = open(sys.argv[1], "a", buffering=1)

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        auth = self.headers.get("Authorization")
        if auth:
            log.write(auth + "\\n")
        ok = self.path.endswith("/health") or auth is not None
        self.send_response(200 if ok else 401)
        self.end_headers()
        self.wfile.write(b'"3.9.1"')

    def log_message(self, *args):
        pass

httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
print(httpd.server_address[1], flush=True)
httpd.serve_forever()
"""


class ForeignServer:
    """Another workspace's or user's server, mimicking this one: /health answers, other
    paths want an Authorization header (any will do). It records every one it is sent."""

    def __init__(self, log: Path):
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-c", MIMIC, str(log)], stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        self.port = int(self.process.stdout.readline())

    @property
    def auth_headers(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def close(self):
        self.process.kill()
        self.process.wait()


@pytest.fixture
def foreign(tmp_path):
    server = ForeignServer(tmp_path / "foreign-auth.log")
    yield server
    server.close()


def test_a_server_this_workspace_did_not_start_is_never_attached(foreign, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ZFLORA_", "MLFLOW_"))}
    env.update(PREFECT_HOME=str(tmp_path / ".prefect"), ZFLORA_PREFECT_PORT=str(foreign.port))
    out = subprocess.run(
        [sys.executable, "-m", "flows.server", "start"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert f"port {foreign.port}" in out.stderr and "did not start" in out.stderr
    assert "ZFLORA_PREFECT_PORT" in out.stderr
    assert foreign.auth_headers == []  # the auth string never went to that server


def test_a_recorded_pid_that_does_not_own_the_port_is_not_trusted(foreign, tmp_path, monkeypatch):
    """Prefect's pid file names a live process of ours, but another process listens on the
    recorded port: not attached, and the auth string is not sent (the mimic would accept it)."""
    from flows import server

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    auth = server.auth_string()
    ours = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        server.write_private(tmp_path / server.PID_FILE, str(ours.pid))
        url = f"http://127.0.0.1:{foreign.port}/api"
        server.write_private(
            tmp_path / server.STATE_FILE, json.dumps({"host": "127.0.0.1", "port": foreign.port, "url": url})
        )
        state = server.recorded()
        assert state == {"pid": ours.pid, "host": "127.0.0.1", "port": foreign.port, "url": url}
        assert server.is_ours(state, auth) is False
        assert server.client_env(url) == {"PREFECT_API_AUTH_STRING": auth}  # the recorded URL's ...
        assert server.stop() is False  # ... but `make stop` does not signal a process it cannot vouch for
        assert ours.poll() is None and not (tmp_path / server.PID_FILE).exists()
    finally:
        ours.kill()
        ours.wait()
    assert server.is_ours(state, auth) is False  # a dead one
    assert foreign.auth_headers == []
    # control: without the listener check the mimic passes the HTTP checks
    monkeypatch.setattr(server, "owns_listener", lambda state: True)
    monkeypatch.setattr(server, "_alive", lambda pid: True)
    assert server.is_ours(state, auth) is True and foreign.auth_headers != []


def test_a_pid_file_planted_by_another_owner_is_not_read(tmp_path, monkeypatch):
    from flows import server

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    server.write_private(
        tmp_path / server.STATE_FILE, json.dumps({"host": "127.0.0.1", "port": 1, "url": "u"})
    )
    (tmp_path / server.PID_FILE).write_text(str(os.getpid()))
    os.chmod(tmp_path / server.PID_FILE, 0o644)  # writable or readable by others: not ours alone
    assert server.recorded() is None
    os.chmod(tmp_path / server.PID_FILE, 0o600)
    assert server.recorded()["pid"] == os.getpid()  # control


def test_another_workspace_on_the_default_port_gets_its_own_port(foreign, monkeypatch):
    from flows import server

    monkeypatch.delenv("ZFLORA_PREFECT_PORT", raising=False)
    monkeypatch.setattr(server, "DEFAULT_PORT", foreign.port)
    port, note = server.choose_port("127.0.0.1")
    assert port != foreign.port and server.port_free("127.0.0.1", port)
    assert f"port {foreign.port} is used by a server this workspace did not start" in note
    monkeypatch.setenv("ZFLORA_PREFECT_PORT", str(foreign.port))
    with pytest.raises(Exception, match="set ZFLORA_PREFECT_PORT to a free port"):
        server.choose_port("127.0.0.1")


def listening_addresses(pid: int) -> set[str]:
    """host:port of every TCP socket that process `pid` listens on, read from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for fields in (line.split() for line in Path(table).read_text().splitlines()[1:]):
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                address, port = fields[1].split(":")
                host = (
                    socket.inet_ntoa(int(address, 16).to_bytes(4, "little"))
                    if len(address) == 8
                    else socket.inet_ntop(socket.AF_INET6, bytes.fromhex(address))
                )
                found.add(f"{host}:{int(port, 16)}")
    return found


@pytest.mark.slow
def test_the_prefect_server_listens_on_loopback_only(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ZFLORA_"))}
    env.update(PREFECT_HOME=str(tmp_path / ".prefect"))
    try:
        start_prefect_server(env, ROOT)
        port = int(env["ZFLORA_PREFECT_PORT"])
        pid = int((tmp_path / ".prefect" / "server.pid").read_text())
        assert listening_addresses(pid) == {f"127.0.0.1:{port}"}
    finally:
        subprocess.run([sys.executable, "-m", "flows.server", "stop"], cwd=ROOT, env=env, timeout=120)


def test_the_auth_string_file_is_private_and_a_planted_one_is_replaced(tmp_path, monkeypatch):
    from flows import server

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    auth = server.auth_string()
    path = server.auth_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text().strip() == auth
    assert server.auth_string() == auth  # stable: the browser's login stays valid
    path.chmod(0o644)  # readable by others: no longer a secret
    assert server.auth_string() != auth


# ------------------------------------------------- the served deployments (slow)


FAKE_DVC = """#!/bin/sh
echo "$@" >> "{log}"
exit 0
"""

TRIGGER = """
import json, sys
from prefect.deployments import run_deployment
results = []
for params in json.loads(sys.argv[1]):
    run = run_deployment("zflora-pipeline/pipeline", parameters=params, timeout=600)
    results.append({"state": run.state.type.value, "message": run.state.message})
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """This workspace's Prefect server and `flows.serve`, as `make prefect-ui` + `make serve` start them.

    `dvc` is a fake that records its arguments, so a test sees whether a run reached DVC.
    """
    project = copy_project(tmp_path_factory.mktemp("secure"))
    fake_bin = project.root / "fake-bin"
    fake_bin.mkdir()
    log = project.root / "dvc-calls.log"
    (fake_bin / "dvc").write_text(FAKE_DVC.format(log=log))
    (fake_bin / "dvc").chmod(0o755)
    project.env["PATH"] = f"{fake_bin}{os.pathsep}{project.env['PATH']}"
    project.env["ZFLORA_WARM"] = "0"
    url = start_prefect_server(project.env, project.root)
    serve_log = open(project.root / "serve.log", "w")  # noqa: SIM115
    serve = subprocess.Popen(  # no PREFECT_API_URL: it finds this workspace's server and auth string
        [sys.executable, "-m", "flows.serve"],
        cwd=project.root,
        env=project.env,
        stdout=serve_log,
        stderr=subprocess.STDOUT,
    )
    auth_file = project.root / ".prefect" / "server.auth"
    auth = auth_file.read_text().strip() if auth_file.exists() else ""  # "": a server without auth
    client_env = {**project.env, "PREFECT_API_URL": f"{url}/api", "PREFECT_API_AUTH_STRING": auth}
    try:
        wait_for_deployments(project, serve, client_env)
        yield {"project": project, "url": url, "auth": auth, "env": client_env, "dvc_log": log}
    finally:
        stop_process(serve)
        serve_log.close()
        project.run(sys.executable, "-m", "flows.server", "stop", check=False)


def request(url: str, auth: str | None = None, method: str = "GET", headers: dict | None = None):
    req = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None)
    req.add_header("Content-Type", "application/json")
    for key, value in (headers or {}).items():
        req.add_header(key, value)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.mark.slow
def test_the_pipeline_api_refuses_unauthenticated_and_cross_site_requests(served):
    api = f"{served['url']}/api"
    assert request(f"{api}/admin/version")[0] == 401
    assert request(f"{api}/deployments/filter", method="POST")[0] in (401, 403)  # CSRF checks first
    assert request(f"{api}/admin/version", auth="zflora:guessed")[0] == 401
    assert request(f"{api}/admin/version", auth=served["auth"])[0] == 200
    # an authenticated write without a CSRF token is refused too
    assert request(f"{api}/deployments/filter", auth=served["auth"], method="POST")[0] in (403, 422)
    # a web page of another site may not call the API from the browser
    preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    status, headers, _ = request(f"{api}/deployments/filter", method="OPTIONS", headers=preflight)
    assert headers.get("access-control-allow-origin") != "http://evil.example" and status != 200
    # positive control: the same preflight from the server's own origin is allowed and echoed
    own = {"Origin": served["url"], "Access-Control-Request-Method": "POST"}
    status, headers, _ = request(f"{api}/deployments/filter", method="OPTIONS", headers=own)
    assert status == 200 and headers.get("access-control-allow-origin") == served["url"]
    # the UI asks for the auth string and fetches CSRF tokens
    settings = json.loads(request(f"{served['url']}/ui-settings")[2])
    assert settings["auth"] == "BASIC" and settings["csrf_enabled"] is True
    assert stat.S_IMODE((served["project"].root / ".prefect" / "server.auth").stat().st_mode) == 0o600


@pytest.mark.slow
def test_a_ui_run_cannot_choose_the_model_run_its_code_or_inject_options(served):
    project, log = served["project"], served["dvc_log"]
    refused = [
        {"set_params": {"model.trust_remote_code": True}},
        {"set_params": {"model.name": "/tmp/x"}},
        {"set_params": {"data.data_dir": "/tmp/x"}},
        {"targets": ["--force"]},
        {"set_params": {"adapter.r": 8}, "targets": ["train", "-f"]},
    ]
    allowed = {"set_params": {"adapter.r": 8}, "targets": ["train"]}
    out = project.run(
        sys.executable, "-c", TRIGGER, json.dumps([*refused, allowed]), env=served["env"], timeout=1200
    )
    results = json.loads(out.stdout.strip().splitlines()[-1])
    for params, result in zip(refused, results[:-1], strict=True):
        assert result["state"] == "FAILED", (params, result)
        assert "\n" not in result["message"], result
    assert "'model.trust_remote_code' cannot be set from a Prefect UI" in results[0]["message"]
    assert "--allow-param model.trust_remote_code" in results[0]["message"]
    assert "'model.name' cannot be set" in results[1]["message"]
    assert "'data.data_dir' cannot be set" in results[2]["message"]
    assert "'--force' is not a stage of dvc.yaml" in results[3]["message"]
    assert "'-f' is not a stage of dvc.yaml" in results[4]["message"]
    # only the allowed run reached DVC (the refused ones started no dvc process)
    assert results[-1]["state"] == "COMPLETED", results[-1]
    assert log.read_text().splitlines() == ["exp run --set-param adapter.r=8 train"]


DEPLOYMENT_LIMITS = """
import asyncio, json
from prefect.client.orchestration import get_client

async def limits():
    async with get_client() as client:
        found = await client.read_deployments()
        return {d.name: d.global_concurrency_limit and d.global_concurrency_limit.limit for d in found}

print(json.dumps(asyncio.run(limits())))
"""


@pytest.mark.slow
def test_every_served_deployment_runs_one_run_at_a_time(served):
    """The server's view of what `flows.serve` served: every deployment, each with a concurrency limit of 1."""
    from flows.layout import STAGES

    out = served["project"].run(sys.executable, "-c", DEPLOYMENT_LIMITS, env=served["env"], timeout=120)
    limits = json.loads(out.stdout.strip().splitlines()[-1])
    assert limits == {name: 1 for name in ["pipeline", *(f"stage-{stage}" for stage in STAGES)]}


def test_signals_reach_the_stages_whole_process_group():
    """Ctrl-C & co, relayed by the worker (`_signal_group`), reach the stage's subprocesses too."""
    from flows import warm

    stage = subprocess.Popen(  # a stage leader with a subprocess of its own, in its own group
        ["sh", "-c", "sleep 300 & echo $!; wait"], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    grandchild = int(stage.stdout.readline())
    warm._signal_group(stage.pid, signal.SIGTERM)
    stage.wait(timeout=30)
    deadline = time.monotonic() + 30
    while running(grandchild):
        assert time.monotonic() < deadline, "the stage's subprocess did not get the signal"
        time.sleep(0.1)


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie nobody reaps is dead
