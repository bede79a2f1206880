"""The local Prefect server the stages share when PREFECT_API_URL is not set.

    python -m flows.server start|stop|status

Prefect's ephemeral mode starts a temporary server in every process (7-30 s each on a
2-core machine); a pipeline of 30 stage processes would spend minutes on that. Instead
the first stage starts one server bound to 127.0.0.1 (port ZFLORA_PREFECT_PORT, default
4200), records its pid in .prefect/server.pid, and later stages reuse it. Its UI shows
every run at http://127.0.0.1:4200. Set PREFECT_API_URL to use another server; set
ZFLORA_PREFECT_MODE=ephemeral for Prefect's per-process temporary servers.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from zflora.errors import ZFLoRAError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200
START_TIMEOUT_S = 240


def _home() -> Path:
    return Path(os.environ["PREFECT_HOME"])


def local_url(host: str | None = None, port: int | None = None) -> str:
    host = host or os.environ.get("ZFLORA_PREFECT_HOST", DEFAULT_HOST)
    port = port or int(os.environ.get("ZFLORA_PREFECT_PORT", DEFAULT_PORT))
    return f"http://{host}:{port}/api"


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


@contextlib.contextmanager
def _lock():
    _home().mkdir(parents=True, exist_ok=True)
    with open(_home() / "server.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def start(host: str | None = None, port: int | None = None, quiet: bool = False) -> str:
    """Start the local server unless one answers already; returns its API URL."""
    url = local_url(host, port)
    with _lock():
        if healthy(url):
            return url
        host_, port_ = url.split("//")[1].split("/")[0].rsplit(":", 1)
        log = open(_home() / "server.log", "ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", host_, "--port", port_],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives this stage; stopped by `python -m flows.server stop`
            env={**os.environ, "PREFECT_API_URL": ""},
        )
        (_home() / "server.pid").write_text(str(process.pid))
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if healthy(url):
                if not quiet:
                    print(
                        f"started a local Prefect server: {url.removesuffix('/api')} (stop: python -m flows.server stop)"
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


def stop() -> bool:
    """Stop the server this project started; True if one was running."""
    pid_file = _home() / "server.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().strip() or 0)
    pid_file.unlink()
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


def ensure_api() -> str | None:
    """Make sure this process talks to a Prefect API; returns its URL (None: ephemeral mode)."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    if os.environ.get("ZFLORA_PREFECT_MODE", "server") == "ephemeral":
        return None
    url = start(quiet=False)
    os.environ["PREFECT_API_URL"] = url
    return url


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="the project's local Prefect server")
    parser.add_argument("action", choices=["start", "stop", "status"])
    args = parser.parse_args(argv)
    if args.action == "start":
        print(start(quiet=True).removesuffix("/api"))
    elif args.action == "stop":
        print("stopped" if stop() else "no server started by this project was running")
    else:
        url = local_url()
        print(f"{url.removesuffix('/api')}: {'running' if healthy(url) else 'not running'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
