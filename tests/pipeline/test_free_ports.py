"""The tests' servers start on a free port even when another process takes it first.

`free_port` can only say that a port was free a moment ago: the server binds it later, and
another process may bind it in between. The servers the tests start (the Prefect server,
`mlflow ui`, `mlflow models serve`) then fail with "address already in use"; the helpers
in conftest.py see that and start them again on another port. Here the first port is
taken on purpose.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from . import conftest
from .conftest import PortTaken, flows_server_start, on_a_free_port, start_server, stop_process

# a server that answers GET /, started the way the tests start theirs; uvicorn is what
# `mlflow models serve` and `mlflow ui` run
SERVERS = {
    "http.server": lambda port: [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
    "uvicorn": lambda port: [
        sys.executable,
        "-m",
        "uvicorn",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--app-dir",
        os.path.dirname(__file__),
        "tiny_asgi:app",
    ],  # fmt: skip
}


@contextlib.contextmanager
def a_taken_port() -> Iterator[int]:
    """A port another process holds (listening, never answering) while the block runs."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", conftest.free_port()))
        holder.listen()
        yield holder.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.mark.parametrize("server", SERVERS)
def test_a_server_whose_port_was_taken_starts_on_another(server, tmp_path, monkeypatch):
    tried: list[int] = []
    real_free_port = conftest.free_port
    with a_taken_port() as taken:
        ports = iter([taken])
        monkeypatch.setattr(conftest, "free_port", lambda: next(ports, None) or real_free_port())

        def start(port: int):
            tried.append(port)
            url = f"http://127.0.0.1:{port}/"
            return url, start_server(SERVERS[server](port), url, answers, tmp_path / f"{port}.log", 60)

        url, process = on_a_free_port(start)
        try:
            assert tried[0] == taken and len(tried) == 2, tried  # the taken port, then another
            assert answers(url) and process.poll() is None
        finally:
            stop_process(process)


def test_the_prefect_server_start_on_a_taken_port_is_tried_again(tmp_path):
    """`python -m flows.server start` on a taken port ends in PortTaken: `start_prefect_server`
    (`on_a_free_port`) then starts it on another port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ZFLORA_"))}
    env["PREFECT_HOME"] = str(tmp_path / ".prefect")
    with a_taken_port() as taken, pytest.raises(PortTaken):
        flows_server_start(env, conftest.ROOT, taken)
    assert not (tmp_path / ".prefect" / "server.pid").exists()  # nothing started


def test_free_ports_are_outside_the_kernels_ephemeral_range():
    """So that no `bind(0)` or outgoing connection is handed the port before its server binds it."""
    low, high = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    ports = {conftest.free_port() for _ in range(20)}
    assert not any(low <= port <= high for port in ports), sorted(ports)
