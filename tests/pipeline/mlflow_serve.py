"""A real `mlflow models serve` process on 127.0.0.1 for the registry tests, and a JSON client."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .conftest import stop_process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_serve(model_uri: str, env: dict[str, str], cwd: Path, timeout: float = 240) -> Iterator[str]:
    """Serve `model_uri` (`--env-manager local`) until the block ends; yields the base URL."""
    port = free_port()
    log = open(Path(cwd) / f"mlflow-serve-{port}.log", "w+")
    server = subprocess.Popen(
        [
            shutil.which("mlflow", path=env["PATH"]),
            "models",
            "serve",
            "-m",
            model_uri,
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise AssertionError(f"mlflow models serve did not come up:\n{log.read()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        stop_process(server)
        log.close()


def invoke(url: str, records: list[dict[str, Any]], max_new_tokens: int) -> tuple[int, Any]:
    """POST `records` to /invocations; (HTTP status, decoded JSON body)."""
    body = json.dumps({"dataframe_records": records, "params": {"max_new_tokens": max_new_tokens}}).encode()
    request = urllib.request.Request(
        f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
