"""A real `mlflow models serve` process on 127.0.0.1 for the registry tests, and a JSON client."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .conftest import on_a_free_port, start_server, stop_process


def pinged(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def mlflow_serve(model_uri: str, env: dict[str, str], cwd: Path, timeout: float = 240) -> Iterator[str]:
    """Serve `model_uri` (`--env-manager local`) until the block ends; yields the base URL."""

    def start(port: int) -> tuple[str, subprocess.Popen]:
        url = f"http://127.0.0.1:{port}"
        command = [
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
        ]
        log = Path(cwd) / f"mlflow-serve-{port}.log"
        return url, start_server(command, url, pinged, log, timeout, cwd=cwd, env=env)

    url, server = on_a_free_port(start)
    try:
        yield url
    finally:
        stop_process(server)


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
