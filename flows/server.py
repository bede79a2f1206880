"""The local Prefect server the stages share when PREFECT_API_URL is not set.

    python -m flows.server start|stop|status

Prefect's ephemeral mode starts a temporary server in every process (7-30 s each on a
2-core machine); a pipeline of 30 stage processes would spend minutes on that. Instead
the first stage starts one server bound to 127.0.0.1 (port ZFLORA_PREFECT_PORT, default
4200) and later stages reuse it. Its UI shows every run at http://127.0.0.1:4200. Set
PREFECT_API_URL to use another server; set ZFLORA_PREFECT_MODE=ephemeral for Prefect's
per-process temporary servers.

The server is this workspace's alone:
- It requires an auth string, generated once into `.prefect/server.auth` (mode 0600,
  `zflora:<random>`); the stages, `flows.serve` and `flows.pipeline` send it, and the UI
  asks for it once per browser. CSRF protection is on, and cross-origin requests are
  allowed only from the server's own origin (so a web page cannot drive it).
- `.prefect/zflora-server.json` (0600) records the server's pid, its process start time
  and its port. A stage attaches only to that process, and only after checking that it
  is alive, that it owns the listening socket, and that it accepts this workspace's auth
  string and refuses requests without it. Whatever else answers on the port is never
  sent the auth string: with the default port another free port is taken (4201, ...),
  with ZFLORA_PREFECT_PORT set the stage stops with one line saying so.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from zflora.errors import ZFLoRAError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200
PORT_TRIES = 20  # with the default port taken by someone else: 4201 ... 4220, then any free port
START_TIMEOUT_S = 240
AUTH_FILE = "server.auth"
STATE_FILE = "zflora-server.json"
LEGACY_PID_FILE = "server.pid"  # written by earlier versions of this module
AUTH_USER = "zflora"


def _home() -> Path:
    return Path(os.environ["PREFECT_HOME"])


def auth_path() -> Path:
    return _home() / AUTH_FILE


def _host() -> str:
    return os.environ.get("ZFLORA_PREFECT_HOST", DEFAULT_HOST)


def _api_url(host: str, port: int) -> str:
    return f"http://{host}:{port}/api"


def local_url(host: str | None = None, port: int | None = None) -> str:
    """The API URL of this workspace's server: the recorded one, else the configured port."""
    if host is None and port is None:
        state = _read_state()
        if state is not None:
            return state["url"]
    host = host or _host()
    port = port or int(os.environ.get("ZFLORA_PREFECT_PORT", DEFAULT_PORT))
    return _api_url(host, port)


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


# ------------------------------------------------------------------ private files


def _open_private(path: Path, flags: int) -> int:
    """Open a file of this user's only (no symlink, owned by us, no group/other access)."""
    fd = os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    st = os.fstat(fd)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        os.close(fd)
        raise PermissionError(f"{path} is not private to this user")
    return fd


def _write_private(path: Path, text: str) -> None:
    """Write atomically a file only this user can read (created 0600, then renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read_private(path: Path) -> str | None:
    try:
        fd = _open_private(path, os.O_RDONLY)
    except OSError:
        return None
    with os.fdopen(fd) as handle:
        return handle.read()


def auth_string(create: bool = True) -> str | None:
    """This workspace's auth string (`zflora:<random>`), created on first use in a 0600 file.

    A file that is not private to this user (other owner, readable by others, a symlink)
    is never trusted: a new string replaces it.
    """
    text = (_read_private(auth_path()) or "").strip()
    if text.startswith(f"{AUTH_USER}:") and len(text) > len(AUTH_USER) + 16:
        return text
    if not create:
        return None
    text = f"{AUTH_USER}:{secrets.token_urlsafe(32)}"
    with contextlib.suppress(FileNotFoundError):
        auth_path().unlink()
    _write_private(auth_path(), text + "\n")
    return text


def _read_state() -> dict | None:
    try:
        state = json.loads(_read_private(_home() / STATE_FILE) or "null")
        if not isinstance(state, dict):
            return None
        int(state["pid"]), int(state["port"]), str(state["url"])
        return state
    except (KeyError, TypeError, ValueError):
        return None


# ------------------------------------------------------------- is it ours?


def _proc_start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (Linux), which a reused pid does not share."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _proc_session(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int, start_time: str | None) -> bool:
    """The recorded process still runs, as this user, and is the same process (not a reused pid)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    if Path("/proc").is_dir() and Path(f"/proc/{pid}").exists():
        if Path(f"/proc/{pid}").stat().st_uid != os.getuid():
            return False
        if start_time is not None and _proc_start_time(pid) != start_time:
            return False
    return True


def _listening_socket(host: str, port: int) -> tuple[int, int] | None:
    """(uid, inode) of the TCP socket listening on host:port, from /proc/net/tcp; None if unknown."""
    try:
        packed = socket.inet_aton(socket.gethostbyname(host))
    except OSError:
        return None
    local = f"{int.from_bytes(packed, 'little'):08X}:{port:04X}"
    wildcard = f"00000000:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 9 and fields[3] == "0A" and fields[1] in (local, wildcard):  # 0A: LISTEN
            return int(fields[7]), int(fields[9])
    return None


def _session_owns_socket(session: int, inode: int) -> bool:
    """Whether a process of `session` (the server and what it started) holds socket `inode`."""
    target = f"socket:[{inode}]"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or _proc_session(int(entry.name)) != session:
            continue
        try:
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == target:
                        return True
        except OSError:
            continue
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


def owns_listener(state: dict) -> bool | None:
    """Whether the recorded server process holds the socket listening on its port (None: no /proc)."""
    listener = _listening_socket(state["host"], int(state["port"]))
    if listener is None:
        return None if not Path("/proc/net/tcp").exists() else False
    uid, inode = listener
    return uid == os.getuid() and _session_owns_socket(int(state["pid"]), inode)


def is_ours(state: dict | None, auth: str | None) -> bool:
    """The recorded server is alive, owns its port, refuses strangers and accepts our auth string.

    The auth string is sent only once the listener is known to be the recorded process.
    """
    if state is None or auth is None:
        return False
    if not _alive(int(state["pid"]), state.get("start_time")):
        return False
    if owns_listener(state) is False:
        return False
    url = state["url"]
    return _status(url, None) == 401 and _status(url, auth) == 200


# ----------------------------------------------------------------------- start


@contextlib.contextmanager
def _lock():
    _home().mkdir(parents=True, exist_ok=True)
    fd = os.open(_home() / "server.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
        port = int(explicit)
        if not port_free(host, port):
            raise ZFLoRAError(
                f"port {port} on {host} is in use by a server this workspace did not start "
                "(another workspace or user, or an older server); set ZFLORA_PREFECT_PORT to a free port "
                "or stop that server"
            )
        return port, None
    for port in range(DEFAULT_PORT, DEFAULT_PORT + PORT_TRIES + 1):
        if port_free(host, port):
            break
    else:
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    note = None
    if port != DEFAULT_PORT:
        note = (
            f"port {DEFAULT_PORT} is used by a server this workspace did not start "
            f"(another workspace or user; `make stop` stops one started by an older zflora); "
            f"this workspace's server uses port {port}"
        )
    return port, note


def server_env(host: str, port: int, auth: str) -> dict[str, str]:
    """The server process's settings: auth string, CSRF protection, CORS for its own origin only."""
    origins = {f"http://{host}:{port}", f"http://127.0.0.1:{port}", f"http://localhost:{port}"}
    return {
        "PREFECT_API_URL": "",
        "PREFECT_API_AUTH_STRING": "",
        "PREFECT_SERVER_API_AUTH_STRING": auth,
        "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "true",
        "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS": ",".join(sorted(origins)),
        "PREFECT_SERVER_API_HOST": host,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_UI_API_URL": _api_url(host, port),  # by default the UI would call port 4200
    }


def start(host: str | None = None, port: int | None = None, quiet: bool = False) -> str:
    """Start this workspace's server unless it runs already; returns its API URL."""
    host = host or _host()
    with _lock():
        auth = auth_string()
        state = _read_state()
        if is_ours(state, auth):
            return state["url"]
        if state is not None and _alive(int(state["pid"]), state.get("start_time")):
            _stop_group(int(state["pid"]))  # ours but not answering as it should (e.g. a new auth string)
        if port is None:
            port, note = choose_port(host)
        elif not port_free(host, port):
            raise ZFLoRAError(f"port {port} on {host} is in use; pick another port")
        else:
            note = None
        if note:
            print(f"zflora: {note}", file=sys.stderr)
        url = _api_url(host, port)
        log = open(_home() / "server.log", "ab")  # noqa: SIM115 - handed to the server process
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives this stage; stopped by `python -m flows.server stop`
            env={**os.environ, **server_env(host, port, auth)},
        )
        log.close()
        state = {
            "pid": process.pid,
            "start_time": _proc_start_time(process.pid),
            "host": host,
            "port": port,
            "url": url,
        }
        _write_private(_home() / STATE_FILE, json.dumps(state))
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if healthy(url) and is_ours(state, auth):
                if not quiet:
                    print(
                        f"started a local Prefect server: {url.removesuffix('/api')} "
                        f"(UI login: the auth string in {auth_path()}; stop: python -m flows.server stop)"
                    )
                return url
            if process.poll() is not None:
                break
            time.sleep(0.5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        raise ZFLoRAError(
            f"the local Prefect server did not start on {url} (see {_home() / 'server.log'}); "
            "free the port or set ZFLORA_PREFECT_PORT, or point PREFECT_API_URL at a running server"
        )


def _stop_group(pid: int) -> bool:
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return False
    for _ in range(50):
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    return True


def stop() -> bool:
    """Stop the server this workspace started; True if one was running."""
    stopped = False
    state = _read_state()
    with contextlib.suppress(FileNotFoundError):
        (_home() / STATE_FILE).unlink()
    if state is not None and _alive(int(state["pid"]), state.get("start_time")):
        stopped = _stop_group(int(state["pid"]))
    legacy = _home() / LEGACY_PID_FILE  # a server started by an earlier version of this module
    with contextlib.suppress(OSError, ValueError):
        pid = int(legacy.read_text().strip() or 0)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if pid > 0 and b"prefect" in cmdline and b"server" in cmdline and _alive(pid, None):
            stopped = _stop_group(pid) or stopped
        legacy.unlink()
    return stopped


def client_env(api_url: str) -> dict[str, str]:
    """What a Prefect client needs to talk to `api_url`: the auth string when it is our server."""
    state = _read_state()
    if state is not None and state["url"].rstrip("/") == api_url.rstrip("/"):
        auth = auth_string(create=False)
        if auth:
            return {"PREFECT_API_AUTH_STRING": auth}
    return {}


def ensure_api() -> str | None:
    """Make sure this process talks to a Prefect API; returns its URL (None: ephemeral mode).

    Sets PREFECT_API_URL, and PREFECT_API_AUTH_STRING for this workspace's server.
    """
    if os.environ.get("PREFECT_API_URL"):
        url = os.environ["PREFECT_API_URL"]
        if not os.environ.get("PREFECT_API_AUTH_STRING"):
            os.environ.update(client_env(url))
        return url
    if os.environ.get("ZFLORA_PREFECT_MODE", "server") == "ephemeral":
        return None
    url = start(quiet=False)
    os.environ["PREFECT_API_URL"] = url
    os.environ.update(client_env(url))
    return url


def main(argv: list[str] | None = None) -> int:
    import argparse

    from .stage import fail

    parser = argparse.ArgumentParser(description="the project's local Prefect server")
    parser.add_argument("action", choices=["start", "stop", "status"])
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            url = start(quiet=True).removesuffix("/api")
            print(f"Prefect UI: {url} (log in with the auth string in {auth_path()})", file=sys.stderr)
            print(url)
        elif args.action == "stop":
            print("stopped" if stop() else "no server started by this workspace was running")
        else:
            state = _read_state()
            if is_ours(state, auth_string(create=False)):
                print(f"{state['url'].removesuffix('/api')}: running (auth string in {auth_path()})")
            else:
                print("no server started by this workspace is running")
    except ZFLoRAError as e:
        return fail(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
