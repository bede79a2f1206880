"""This workspace's Prefect server, managed with Prefect's own commands, and how stages attach to it.

    python -m flows.server start|stop|status          # make prefect-ui / make stop

Unless PREFECT_API_URL is set, the stages share one local Prefect server. The first stage
starts it with `prefect server start --background` under PREFECT_HOME=.prefect/ (so its
database and Prefect's pid file, `.prefect/server.pid`, stay in the workspace); later
stages attach to it; `prefect server stop` stops it. Its UI shows every run at
http://127.0.0.1:4200 (or the next free port). ZFLORA_PREFECT_MODE=ephemeral uses
Prefect's per-process temporary servers instead.

The server is this workspace's alone, through Prefect's own settings:
- PREFECT_SERVER_API_AUTH_STRING: generated once into `.prefect/server.auth` (mode 0600,
  `zflora:<random>`); the stages, `flows.serve` and `flows.pipeline` send it, and the UI
  asks for it once per browser;
- PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED, and PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS
  set to the server's own origin (a web page of another site cannot drive it).
Prefect's pid file records no port, so `.prefect/server.json` (0600) adds it. A stage
sends the auth string only to the process in the pid file, and only after checking that
it is alive, runs as this user, holds the socket listening on the recorded port, and
refuses requests without the auth string. Whatever else answers on the port never sees
it: with the default port another free port is taken (4201, ...), with
ZFLORA_PREFECT_PORT set the stage stops with one line saying so.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from zflora.errors import ZFLoRAError

from .private import read_private, write_private

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200
PORT_TRIES = 20  # with the default port taken by someone else: 4201 ... 4220, then any free port
START_TIMEOUT_S = 240
AUTH_FILE = "server.auth"
STATE_FILE = "server.json"  # our addition to Prefect's pid file: the server's host, port and URL
PID_FILE = "server.pid"  # Prefect's own (prefect.cli._server_utils.SERVER_PID_FILE_NAME)
AUTH_USER = "zflora"


def _home() -> Path:
    return Path(os.environ["PREFECT_HOME"])


def auth_path() -> Path:
    return _home() / AUTH_FILE


def _api_url(host: str, port: int) -> str:
    return f"http://{host}:{port}/api"


# ------------------------------------------------------------------ private files


def auth_string(create: bool = True) -> str | None:
    """This workspace's auth string (`zflora:<random>`), created on first use in a 0600 file.

    A file that is not private to this user (other owner, readable by others, a symlink)
    is never trusted: a new string replaces it.
    """
    text = (read_private(auth_path()) or "").strip()
    if text.startswith(f"{AUTH_USER}:") and len(text) > len(AUTH_USER) + 16:
        return text
    if not create:
        return None
    text = f"{AUTH_USER}:{secrets.token_urlsafe(32)}"
    with contextlib.suppress(FileNotFoundError):
        auth_path().unlink()
    write_private(auth_path(), text + "\n")
    return text


def recorded() -> dict | None:
    """The running server as recorded: Prefect's pid file plus our host and port; None if absent."""
    try:
        state = json.loads(read_private(_home() / STATE_FILE) or "null")
        pid = int((read_private(_home() / PID_FILE) or "").strip())
        return {"pid": pid, "host": str(state["host"]), "port": int(state["port"]), "url": str(state["url"])}
    except (KeyError, TypeError, ValueError):
        return None


# ------------------------------------------------------------- is it ours?


def _alive(pid: int) -> bool:
    """The process runs, as this user."""
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}").stat().st_uid == os.getuid() if Path("/proc").is_dir() else True
    except OSError:
        return False


def _listening_socket(host: str, port: int) -> tuple[int, int] | None:
    """(uid, inode) of the TCP socket listening on host:port, from /proc/net/tcp; None if none."""
    try:
        packed = socket.inet_aton(socket.gethostbyname(host))
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    local = f"{int.from_bytes(packed, 'little'):08X}:{port:04X}"
    for fields in (line.split() for line in lines):
        if len(fields) > 9 and fields[3] == "0A" and fields[1] in (local, f"00000000:{port:04X}"):  # LISTEN
            return int(fields[7]), int(fields[9])
    return None


def owns_listener(state: dict) -> bool | None:
    """Whether the recorded process holds the socket listening on its port (None: no /proc here)."""
    if not Path("/proc/net/tcp").exists():
        return None
    listener = _listening_socket(state["host"], int(state["port"]))
    if listener is None or listener[0] != os.getuid():
        return False
    target = f"socket:[{listener[1]}]"
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{state['pid']}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == target:
                    return True
    return False


def _status(url: str, auth: str | None, timeout: float = 5.0) -> int | None:
    """HTTP status of an API call that needs auth, sent with `auth` (or none)."""
    request = urllib.request.Request(f"{url}/admin/version")
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError, ValueError):
        return None


def is_ours(state: dict | None, auth: str | None) -> bool:
    """The recorded server is alive, owns its port, refuses strangers and accepts our auth string.

    The auth string is sent only once the listener is known to be the recorded process.
    """
    if state is None or auth is None or not _alive(state["pid"]) or owns_listener(state) is False:
        return False
    return _status(state["url"], None) == 401 and _status(state["url"], auth) == 200


# ----------------------------------------------------------------------- start


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """Serialises starts: two stages never start two servers."""
    _home().mkdir(parents=True, exist_ok=True)
    fd = os.open(_home() / "server.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def choose_port(host: str) -> tuple[int, str | None]:
    """A free port for a new server, and a note when it is not the one asked for.

    ZFLORA_PREFECT_PORT set: that port or a one-line error. Default: 4200, or the next
    free one when something this workspace did not start holds 4200.
    """
    explicit = os.environ.get("ZFLORA_PREFECT_PORT")
    if explicit:
        if not port_free(host, int(explicit)):
            raise ZFLoRAError(
                f"port {explicit} on {host} is in use by a server this workspace did not start "
                "(another workspace or user, or an older server); set ZFLORA_PREFECT_PORT to a free port "
                "or stop that server"
            )
        return int(explicit), None
    port = next((p for p in range(DEFAULT_PORT, DEFAULT_PORT + PORT_TRIES + 1) if port_free(host, p)), 0)
    if port == 0:
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    if port == DEFAULT_PORT:
        return port, None
    return port, (
        f"port {DEFAULT_PORT} is used by a server this workspace did not start "
        f"(another workspace or user); this workspace's server uses port {port}"
    )


def server_env(host: str, port: int, auth: str) -> dict[str, str]:
    """Prefect's own settings for the server: auth string, CSRF protection, CORS for its own origin only."""
    origins = {f"http://{host}:{port}", f"http://127.0.0.1:{port}", f"http://localhost:{port}"}
    return {
        "PREFECT_API_URL": _api_url(host, port),  # what `prefect server status` checks
        "PREFECT_API_AUTH_STRING": "",
        "PREFECT_SERVER_API_AUTH_STRING": auth,
        "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "true",
        "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS": ",".join(sorted(origins)),
        "PREFECT_UI_API_URL": _api_url(host, port),  # by default the UI would call port 4200
    }


def _prefect(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,  # the server outlives this stage and its terminal's Ctrl-C
    )


def _last_line(result: subprocess.CompletedProcess) -> str:
    lines = [line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {result.returncode}"


def start(quiet: bool = False, extra_env: dict[str, str] | None = None) -> str:
    """Start this workspace's server unless it runs already; returns its API URL.

    `extra_env`: more of Prefect's settings for the server (the cluster's database URL)."""
    host = os.environ.get("ZFLORA_PREFECT_HOST", DEFAULT_HOST)
    with _lock():
        auth = auth_string()
        state = recorded()
        if is_ours(state, auth):
            return state["url"]
        stop()  # ours but not answering as it should (a new auth string), or a stale pid file
        port, note = choose_port(host)
        if note:
            print(f"zflora: {note}", file=sys.stderr)
        url = _api_url(host, port)
        env = {**server_env(host, port, auth), **(extra_env or {})}
        started = _prefect("server", "start", "--background", "--host", host, "--port", str(port), env=env)
        pid = (read_private(_home() / PID_FILE) or "").strip()
        if started.returncode != 0 or not pid.isdigit():
            raise ZFLoRAError(
                f"the local Prefect server did not start on port {port} ({_last_line(started)}); "
                "free the port or set ZFLORA_PREFECT_PORT, or point PREFECT_API_URL at a running server"
            )
        write_private(_home() / STATE_FILE, json.dumps({"host": host, "port": port, "url": url}))
        ready = _prefect(
            "server",
            "status",
            "--wait",
            "--timeout",
            str(START_TIMEOUT_S),
            env=env,
            timeout=START_TIMEOUT_S + 60,
        )
        ours = ready.returncode == 0 and is_ours(recorded(), auth)
        deadline = time.monotonic() + START_TIMEOUT_S / 4
        while ready.returncode == 0 and not ours and time.monotonic() < deadline and _alive(int(pid)):
            time.sleep(1)  # a loaded machine: its first answers can take longer than _status waits
            ours = is_ours(recorded(), auth)
        if not ours:
            stop()
            raise ZFLoRAError(
                f"the local Prefect server on {url} did not come up as this workspace's "
                f"({_last_line(ready)}); free the port or set ZFLORA_PREFECT_PORT, or point PREFECT_API_URL at a running server"
            )
        if not quiet:
            print(
                f"started a local Prefect server: {url.removesuffix('/api')} "
                f"(UI login: the auth string in {auth_path()}; stop: make stop)"
            )
        return url


def stop() -> bool:
    """Stop the server this workspace started (`prefect server stop`); True if one was running."""
    state = recorded()
    running = state is not None and _alive(state["pid"]) and owns_listener(state) is not False
    if running:
        _prefect("server", "stop")  # SIGTERM to the pid in Prefect's pid file, which it removes
    for name in (PID_FILE, STATE_FILE):  # a stale pid names no process of ours: never signalled
        with contextlib.suppress(FileNotFoundError):
            (_home() / name).unlink()
    return running


# ---------------------------------------------------------------------- attach


def client_env(api_url: str) -> dict[str, str]:
    """What a Prefect client needs to talk to `api_url`: the auth string when it is our server."""
    state = recorded()
    if state is not None and state["url"].rstrip("/") == api_url.rstrip("/"):
        auth = auth_string(create=False)
        if auth:
            return {"PREFECT_API_AUTH_STRING": auth}
    return {}


def ensure_api() -> str | None:
    """Make sure this process talks to a Prefect API; returns its URL (None: ephemeral mode).

    Sets PREFECT_API_URL, and PREFECT_API_AUTH_STRING for this workspace's server, in the
    environment (Prefect's background workers read it); `attached` applies them to the
    settings Prefect already read at import.
    """
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        if os.environ.get("ZFLORA_PREFECT_MODE", "server") == "ephemeral":
            return None
        url = start()
    os.environ["PREFECT_API_URL"] = url
    if not os.environ.get("PREFECT_API_AUTH_STRING"):
        os.environ.update(client_env(url))
    return url


@contextlib.contextmanager
def attached(api_url: str | None) -> Iterator[None]:
    """Prefect's settings pointed at `api_url` (and its auth string) inside the block."""
    if api_url is None:
        yield
        return
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    updates: dict = {PREFECT_API_URL: api_url}
    if os.environ.get("PREFECT_API_AUTH_STRING"):
        updates[PREFECT_API_AUTH_STRING] = os.environ["PREFECT_API_AUTH_STRING"]
    with temporary_settings(updates=updates):
        yield


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="this workspace's local Prefect server")
    parser.add_argument("action", choices=["start", "stop", "status"])
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            url = start(quiet=True).removesuffix("/api")
            print(f"Prefect UI: {url} (log in with the auth string in {auth_path()})", file=sys.stderr)
            print(url)
        elif args.action == "stop":
            print("stopped" if stop() else "no server started by this workspace was running")
        elif is_ours(state := recorded(), auth_string(create=False)):
            print(f"{state['url'].removesuffix('/api')}: running (auth string in {auth_path()})")
        else:
            print("no server started by this workspace is running")
    except ZFLoRAError as e:
        print(f"zflora: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
