"""A warm worker that runs stage processes without paying their imports again.

Every DVC stage is its own `python -m flows.<stage>` process, and each one spends 10-20 s
on a 2-core machine importing torch, transformers, Prefect and MLflow before doing any
work; the default pipeline has about 30 stages. The first stage therefore starts a
worker in the background (`python -m flows.warm serve`) that imports all of that once
and waits on a Unix socket private to this user and workspace. Later stage processes
hand their command line, working directory, environment and terminal (stdin, stdout,
stderr, passed as file descriptors) to the worker, which forks a child that runs the
stage exactly as the process itself would have, then reports the exit status back.

What keeps this safe:
- The worker serves only the source it imported: every request carries a stamp of the
  project's Python files (flows/, tasks/, zflora/: paths, sizes, mtimes), the interpreter,
  the installed packages and the environment variables read at import time; on any
  difference the worker declines (the stage runs in its own process as usual) and exits.
- The child's lifetime follows the stage process: if the stage process is killed
  (SIGKILL included) the worker kills the child's whole process group at once; SIGINT,
  SIGTERM and SIGHUP are forwarded. So `dvc repro` interrupted behaves as before.
- The worker never runs model code itself and checks it has no threads before forking.
- It exits after ZFLORA_WARM_IDLE_S seconds without work (default 120), on a changed
  stamp, or on `python -m flows.warm stop`. ZFLORA_WARM=0 turns the whole thing off;
  torchrun ranks (RANK set) always run in their own process.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import sys
import tempfile
from pathlib import Path

PACKAGES = ("flows", "tasks", "zflora")
# environment variables that libraries read when imported: a worker started under other
# values would behave differently from a fresh process
IMPORT_TIME_ENV = (
    "PREFECT_", "MLFLOW_", "HF_", "TRANSFORMERS_", "TORCH", "OMP_", "MKL_", "CUDA_", "PYTHON",
    "TOKENIZERS_", "DISABLE_MLFLOW", "DO_NOT_TRACK", "ZFLORA_", "PATH", "VIRTUAL_ENV", "LD_",
)  # fmt: skip
# per-run variables the stamp ignores (they reach the child with the rest of the environment)
RUN_ENV = ("ZFLORA_WARM_IDLE_S",)
PRELOAD = (
    "torch", "transformers", "transformers.trainer", "transformers.models.llama.modeling_llama",
    "transformers.models.qwen2.modeling_qwen2", "transformers.models.mistral.modeling_mistral",
    "peft", "safetensors.torch", "tokenizers", "mlflow", "prefect", "prefect.states",
    "zflora", "zflora.method.model", "zflora.harness.methods", "zflora.harness.train", "zflora.harness.evaluate", "zflora.harness.generation",
    "zflora.method.fusion", "zflora.method.export", "zflora.harness.profiling", "zflora.harness.tinybase", "zflora.harness.data",
    "flows.base", "flows.prepare", "flows.train", "flows.evaluate", "flows.fuse", "flows.profile", "flows.report",
)  # fmt: skip
STAGE_MODULES = tuple(m for m in PRELOAD if m.startswith("flows."))
_HEADER = struct.Struct("!I")


def enabled() -> bool:
    return os.environ.get("ZFLORA_WARM", "1").strip().lower() not in ("0", "false", "no", "off") and (
        "RANK" not in os.environ and hasattr(socket, "AF_UNIX") and hasattr(socket, "send_fds")
    )


def root() -> Path:
    return Path(os.environ.get("ZFLORA_PROJECT_ROOT") or os.getcwd()).resolve()


def socket_path(workspace: Path | None = None) -> str:
    key = hashlib.sha256(str(workspace or root()).encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"zflora-warm-{os.getuid()}-{key}.sock")


def stamp(workspace: Path | None = None, env: dict[str, str] | None = None) -> str:
    """What a worker's imported code and settings depend on; cheap (a few hundred stat calls).

    `env`: the environment the process started with (imports add variables of their own,
    e.g. torch sets TORCHINDUCTOR_CACHE_DIR, which must not make a worker look stale).
    """
    workspace = workspace or root()
    env = os.environ if env is None else env
    h = hashlib.sha256()
    h.update(f"{sys.executable}\0{sys.version}\0{workspace}\0".encode())
    for package in PACKAGES:
        for path in sorted((workspace / package).rglob("*.py")):
            st = path.stat()
            h.update(f"{path.relative_to(workspace)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    for entry in sys.path:  # installing or removing a package changes its folder's mtime
        if entry and os.path.isdir(entry) and "site-packages" in entry:
            h.update(f"{entry}\0{os.stat(entry).st_mtime_ns}\0".encode())
    for key in sorted(env):
        if key.startswith(IMPORT_TIME_ENV) and key not in RUN_ENV:
            h.update(f"{key}={env[key]}\0".encode())
    return h.hexdigest()


def _send(sock: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    payload = _HEADER.pack(len(data)) + data
    if fds:
        socket.send_fds(sock, [payload], fds)
    else:
        sock.sendall(payload)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = b""
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            raise ConnectionError("closed")
        chunks += chunk
    return chunks


def _recv(sock: socket.socket) -> dict:
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    return json.loads(_recv_exact(sock, size))


# ----------------------------------------------------------------------------- client


def forward(module: str) -> None:
    """Run `python -m <module> <args>` in the warm worker and exit with its status.

    Returns (and the caller runs the stage itself) when the worker is off, absent (then
    one is started for the next stage), busy with other code, or fails to answer.
    """
    if not enabled():
        return
    path = socket_path()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(5)
        sock.connect(path)
        request = {
            "stamp": stamp(),
            "module": module,
            "argv": sys.argv[1:],
            "cwd": os.getcwd(),
            "env": dict(os.environ),
        }
        _send(sock, request, [0, 1, 2])
        reply = _recv(sock)
    except (OSError, ConnectionError, ValueError):
        sock.close()
        spawn()
        return
    if reply.get("status") != "accepted":
        sock.close()
        spawn()
        return
    sock.settimeout(None)
    _wait_for_child(sock)


def _wait_for_child(sock: socket.socket) -> None:
    import signal

    def relay(signum, _frame):
        try:
            _send(sock, {"signal": signum})
        except OSError:
            pass

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, relay)
    while True:
        try:
            reply = _recv(sock)
        except InterruptedError:
            continue
        except (OSError, ConnectionError, ValueError):
            print("zflora: error: the warm worker stopped during this stage; rerun it", file=sys.stderr)
            os._exit(1)
        if "exit" in reply:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(int(reply["exit"]))


def spawn() -> None:
    """Start a worker for this workspace in the background unless one is starting already."""
    import fcntl
    import subprocess

    lock_path = socket_path() + ".lock"
    try:
        lock = open(lock_path, "w")  # noqa: SIM115 - held by the worker's lifetime below
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return  # another stage is starting one
    try:
        subprocess.Popen(
            [sys.executable, "-m", "flows.warm", "serve"],
            cwd=str(root()),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            pass_fds=(lock.fileno(),),  # the worker holds the lock until it listens
            env={**os.environ, "ZFLORA_WARM_LOCK_FD": str(lock.fileno())},
        )
    finally:
        lock.close()


# ----------------------------------------------------------------------------- worker


def serve() -> int:
    """Import everything, then fork one child per request until idle, stale or stopped."""
    import importlib
    import select
    import threading
    import time

    lock_fd = int(os.environ.pop("ZFLORA_WARM_LOCK_FD", "-1"))
    start_env = dict(os.environ)
    my_stamp = stamp(env=start_env)  # before importing: code edited meanwhile makes this worker stale
    path = socket_path()
    for name in PRELOAD:
        importlib.import_module(name)
    # variables the imports set for themselves: a stage process would have them too
    added_env = {k: v for k, v in os.environ.items() if k not in start_env}
    if threading.active_count() != 1:  # forking a process that has threads is not safe
        return 1
    idle_s = float(os.environ.get("ZFLORA_WARM_IDLE_S", "120"))
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return 0  # another worker serves this workspace already
    except OSError:
        if os.path.lexists(path):
            os.unlink(path)  # left by a worker that was killed
    finally:
        probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket is for this user only
    try:
        listener.bind(path)
    finally:
        os.umask(old_umask)
    listener.listen(16)
    inode = os.stat(path).st_ino
    if lock_fd >= 0:
        os.close(lock_fd)  # listening now: the next stage may connect, or start a worker
    children: dict[int, socket.socket] = {}  # child pid -> its stage process's connection
    stats = {"pid": os.getpid(), "served": 0}
    last_busy = last_check = time.monotonic()

    def close_listener() -> None:
        nonlocal listener
        if listener is not None:
            listener.close()
            listener = None
            try:
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
            except OSError:
                pass

    try:
        while listener is not None or children:
            watched = [*children.values()] + ([listener] if listener is not None else [])
            readable, _, _ = select.select(watched, [], [], 0.5)
            for sock in readable:
                if sock is listener:
                    conn, _ = listener.accept()
                    verdict = _accept(conn, my_stamp, listener, children, stats, added_env)
                    if isinstance(verdict, int):
                        children[verdict] = conn
                    elif verdict in ("stale", "stop"):
                        close_listener()
                    continue
                pid = next(p for p, c in children.items() if c is sock)
                try:
                    message = _recv(sock)
                    if "signal" in message:
                        os.kill(pid, int(message["signal"]))
                        continue
                except (OSError, ConnectionError, ValueError):
                    pass
                _kill_group(pid)  # the stage process went away (killed): its child goes too
            for pid in list(children):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    conn = children.pop(pid)
                    code = os.waitstatus_to_exitcode(status)
                    try:
                        _send(conn, {"exit": code if code >= 0 else 128 - code})
                    except OSError:
                        pass
                    conn.close()
            now = time.monotonic()
            if children:
                last_busy = now
            elif now - last_busy > idle_s:
                close_listener()
            if listener is not None and now - last_check > 5:
                last_check = now
                try:
                    gone = os.stat(path).st_ino != inode
                except OSError:
                    gone = True
                if gone or stamp(env=start_env) != my_stamp:
                    close_listener()
    finally:
        close_listener()
        for pid in children:
            _kill_group(pid)
        _remove_spawn_lock(path + ".lock")
    return 0


def _remove_spawn_lock(lock_path: str) -> None:
    """Leave no lock file behind in the temp folder, unless a stage is starting a worker now."""
    import fcntl

    try:
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(lock_path)
    except OSError:
        pass


def _kill_group(pid: int) -> None:
    import signal

    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
            return
        except (ProcessLookupError, PermissionError):
            continue


def _accept(
    conn: socket.socket,
    my_stamp: str,
    listener: socket.socket,
    children: dict,
    stats: dict,
    added_env: dict[str, str],
) -> int | str:
    """Read one request and fork its child: the child's pid, or why not ('stale', 'stop', 'bad', 'status')."""
    fds: list[int] = []
    try:
        conn.settimeout(5)
        raw, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        (size,) = _HEADER.unpack(raw[: _HEADER.size])
        body = raw[_HEADER.size :]
        while len(body) < size:
            chunk = conn.recv(size - len(body))
            if not chunk:
                raise ConnectionError("closed")
            body += chunk
        request = json.loads(body)
    except (OSError, ConnectionError, ValueError, struct.error):
        for fd in fds:
            os.close(fd)
        conn.close()
        return "bad"
    verdict = None
    if request.get("status"):
        for fd in fds:
            os.close(fd)
        try:
            _send(conn, {"status": "running", **stats, "children": sorted(children), "stamp": my_stamp})
        except OSError:
            pass
        conn.close()
        return "status"
    if request.get("stop"):
        verdict = "stop"
    elif request.get("stamp") != my_stamp:
        verdict = "stale"
    elif len(fds) != 3 or request.get("module") not in STAGE_MODULES:
        verdict = "bad"
    if verdict is not None:
        for fd in fds:
            os.close(fd)
        try:
            _send(conn, {"status": "declined" if verdict != "stop" else "stopping"})
        except OSError:
            pass
        conn.close()
        return verdict
    conn.settimeout(None)
    pid = os.fork()
    if pid == 0:
        _run_child(request, fds, [listener, conn, *children.values()], added_env)
    for fd in fds:
        os.close(fd)
    stats["served"] += 1
    try:
        _send(conn, {"status": "accepted"})
    except OSError:
        _kill_group(pid)
    return pid


def _run_child(
    request: dict, fds: list[int], sockets: list[socket.socket], added_env: dict[str, str]
) -> None:
    """In the forked child: become the stage process that asked, run it, exit with its status."""
    import atexit
    import importlib
    import signal
    import traceback

    code = 1
    try:
        os.setsid()  # its own process group: killing the group takes its subprocesses too
        for sock in sockets:
            sock.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(signum, signal.SIG_DFL)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for key, value in added_env.items():
            os.environ.setdefault(key, value)
        module = importlib.import_module(request["module"])
        sys.argv = [module.__file__, *request["argv"]]
        sys.stdout.reconfigure(line_buffering=sys.stdout.isatty())
        code = module.main(request["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        if not isinstance(e.code, int | None):
            print(e.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # noqa: BLE001 - report like an uncaught exception would
        traceback.print_exc()
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()  # what interpreter shutdown would run (Prefect flushes logs)
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:  # noqa: BLE001
                    pass
            os._exit(code if isinstance(code, int) else 1)


def _ask(message: dict, workspace: Path | None = None) -> dict | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(5)
        sock.connect(socket_path(workspace))
        _send(sock, message)
        return _recv(sock)
    except (OSError, ConnectionError, ValueError):
        return None
    finally:
        sock.close()


def stop(workspace: Path | None = None) -> bool:
    """Ask this workspace's worker to exit once its running stages end; True if one answered."""
    return (_ask({"stop": True}, workspace) or {}).get("status") == "stopping"


def status(workspace: Path | None = None) -> dict | None:
    """The worker's pid, stages served, running children and stamp; None if none answers."""
    return _ask({"status": True}, workspace)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="the warm worker that runs this workspace's stages")
    parser.add_argument("action", choices=["serve", "stop", "status"])
    args = parser.parse_args(argv)
    if args.action == "serve":
        return serve()
    if args.action == "stop":
        print("stopped" if stop() else "no warm worker was running")
        return 0
    info = status()
    if info is None:
        print("no warm worker is running for this workspace")
    else:
        same = "match" if info["stamp"] == stamp() else "do not match"
        print(
            f"warm worker pid {info['pid']}: {info['served']} stages served, {len(info['children'])} running; "
            f"its code and environment {same} this shell's"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
