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
- Only this user's processes take part. The socket and the spawn lock live in
  `<tmp>/zflora-<uid>/`, a directory created with mode 0700 whose owner and mode are
  checked before every use (as tmux and ssh-agent do); a directory that is not private
  to this user turns the worker off with a one-line warning. Both ends check the peer's
  uid with SO_PEERCRED before sending anything, and the lock file is opened with
  O_NOFOLLOW and checked to be this user's regular file.
- The worker serves only the source it imported: every request carries a stamp of the
  project's Python files (flows/, tasks/, zflora/: paths, sizes, mtimes), the interpreter,
  the installed packages and the environment variables read at import time; on any
  difference the worker declines (the stage runs in its own process as usual) and exits.
- The child's lifetime follows the stage process: if the stage process is killed
  (SIGKILL included) the worker kills the child's whole process group at once; SIGINT,
  SIGTERM and SIGHUP are forwarded to that process group. So `dvc repro` interrupted
  behaves as before.
- The child's lifetime also follows the worker: the child asks the kernel for SIGKILL
  when the worker dies (PR_SET_PDEATHSIG), and the stage process, told the child's
  process group when the worker accepted, kills that group when the worker's connection
  drops without an exit status. No orphaned stage keeps writing into the workspace.
- The worker never runs model code itself and checks it has no threads before forking.
- It exits after ZFLORA_WARM_IDLE_S seconds without work (default 120), on a changed
  stamp, or on `python -m flows.warm stop`. ZFLORA_WARM=0 turns the whole thing off;
  torchrun ranks (RANK set) always run in their own process.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import stat as stat_
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
LIBRARIES = (
    "torch", "transformers", "transformers.trainer", "transformers.models.llama.modeling_llama",
    "transformers.models.qwen2.modeling_qwen2", "transformers.models.mistral.modeling_mistral",
    "peft", "safetensors.torch", "tokenizers", "mlflow", "prefect", "prefect.states",
)  # fmt: skip
_CMD = re.compile(r"python -m flows (?P<stage>[a-z_]+)")


def stage_modules(dvc_file: Path | None = None) -> tuple[str, ...]:
    """The stage modules dvc.yaml's cmds run (`python -m flows <stage>` -> flows.<stage>), in order."""
    text = (dvc_file or root() / "dvc.yaml").read_text()
    return tuple(dict.fromkeys(f"flows.{m['stage']}" for m in _CMD.finditer(text)))


_HEADER = struct.Struct("!I")


def enabled() -> bool:
    return os.environ.get("ZFLORA_WARM", "1").strip().lower() not in ("0", "false", "no", "off") and (
        "RANK" not in os.environ
        and hasattr(socket, "AF_UNIX")
        and hasattr(socket, "send_fds")
        and hasattr(socket, "SO_PEERCRED")
    )


def root() -> Path:
    return Path(os.environ.get("ZFLORA_PROJECT_ROOT") or os.getcwd()).resolve()


class UnsafeDir(OSError):
    """The socket directory is not private to this user: the worker stays off."""


def private_dir() -> str:
    """`<tmp>/zflora-<uid>`: the directory of this user's sockets and lock files (not created here)."""
    return os.path.join(tempfile.gettempdir(), f"zflora-{os.getuid()}")


def checked_dir() -> str:
    """private_dir(), created 0700 if absent; UnsafeDir unless it is this user's own, private directory."""
    path = private_dir()
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat_.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise UnsafeDir(
            f"{path} is not a directory private to this user (owner uid {st.st_uid}, mode {stat_.filemode(st.st_mode)}); "
            "the warm worker stays off: remove it, or set ZFLORA_WARM=0"
        )
    return path


def socket_path(workspace: Path | None = None) -> str:
    key = hashlib.sha256(str(workspace or root()).encode()).hexdigest()[:16]
    return os.path.join(private_dir(), f"warm-{key}.sock")


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _same_user(sock: socket.socket) -> bool:
    try:
        return peer_uid(sock) == os.getuid()
    except OSError:
        return False


def open_lock(path: str) -> int:
    """Open (create) a lock file: never through a symlink, and only a regular file of this user's."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    st = os.fstat(fd)
    if not stat_.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
        os.close(fd)
        raise PermissionError(f"{path} is not a lock file of this user's")
    return fd


def _warn(message: str) -> None:
    print(f"zflora: warning: {message}", file=sys.stderr)


def _connect(path: str, timeout: float = 5) -> socket.socket:
    """Connect to this user's worker; OSError if the directory or the listener is not this user's."""
    checked_dir()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        if not _same_user(sock):
            raise PermissionError(f"{path} is served by another user's process")
    except BaseException:
        sock.close()
        raise
    return sock


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
        for folder, subfolders, files in os.walk(workspace / package):  # errors (a folder gone): skipped
            subfolders.sort()
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                path = os.path.join(folder, name)
                try:
                    st = os.stat(path)
                except OSError:  # removed while scanning (an editor's temporary file, a git checkout)
                    h.update(f"{os.path.relpath(path, workspace)}\0gone\0".encode())
                    continue
                h.update(f"{os.path.relpath(path, workspace)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    for entry in sys.path:  # installing or removing a package changes its folder's mtime
        if entry and "site-packages" in entry:
            try:
                h.update(f"{entry}\0{os.stat(entry).st_mtime_ns}\0".encode())
            except OSError:
                continue
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


def forward(argv: list[str]) -> None:
    """Run `python -m flows <argv>` (a stage and its options) in the warm worker and exit with its status.

    Returns (and the caller runs the stage itself) when the worker is off, absent or
    serving older code (then a new one is started for the next stage), or fails to answer.
    """
    if not enabled():
        return
    path = socket_path()
    try:
        sock = _connect(path)
    except UnsafeDir as e:
        _warn(str(e))
        return
    except PermissionError as e:  # never hand this process's environment to another user
        _warn(f"{e}; the warm worker stays off")
        return
    except OSError:
        spawn()
        return
    try:
        request = {
            "stamp": stamp(),
            "module": f"flows.{argv[0]}",
            "argv": list(argv),
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
        if reply.get("reason") == "stale":  # it serves older code and is leaving: start the next one
            spawn()
        return
    sock.settimeout(None)
    _wait_for_child(sock, int(reply.get("pgid", 0)))


def _wait_for_child(sock: socket.socket, pgid: int) -> None:
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
            if pgid > 0:  # the worker died: its child got SIGKILL (PR_SET_PDEATHSIG); take the group too
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except OSError:
                    pass
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
        checked_dir()
        lock = os.fdopen(open_lock(lock_path), "w")  # held by the worker's lifetime below
    except OSError as e:  # not a private directory, or a lock file that is not ours: no worker
        _warn(f"{e}; the warm worker stays off")
        return
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
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

    global _prctl
    lock_fd = int(os.environ.pop("ZFLORA_WARM_LOCK_FD", "-1"))
    start_env = dict(os.environ)
    my_stamp = stamp(env=start_env)  # before importing: code edited meanwhile makes this worker stale
    path = socket_path()
    try:
        checked_dir()
    except OSError:
        return 1
    for name in (*LIBRARIES, *stage_modules()):
        importlib.import_module(name)
    _prctl = _load_prctl()
    # variables the imports set for themselves: a stage process would have them too
    added_env = {k: v for k, v in os.environ.items() if k not in start_env}
    if threading.active_count() != 1:  # forking a process that has threads is not safe
        return 1
    idle_s = float(os.environ.get("ZFLORA_WARM_IDLE_S", "120"))
    try:
        _connect(path, timeout=2).close()
        return 0  # another worker serves this workspace already
    except OSError:
        if os.path.lexists(path):
            os.unlink(path)  # left by a worker that was killed (the directory is ours alone)
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
                    if "signal" in message:  # Ctrl-C & co: to the stage's whole process group
                        _signal_group(pid, int(message["signal"]))
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
    """Leave no lock file behind, unless a stage is starting a worker now."""
    import fcntl

    try:
        with os.fdopen(open_lock(lock_path), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(lock_path)
    except OSError:
        pass


def _signal_group(pid: int, signum: int) -> None:
    """Signal the child's process group (the child is its leader), or the child alone if that fails."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signum)
            return
        except (ProcessLookupError, PermissionError):
            continue


def _kill_group(pid: int) -> None:
    import signal

    _signal_group(pid, signal.SIGKILL)


_prctl = None  # libc's prctl, looked up before forking (PR_SET_PDEATHSIG for the children)
PR_SET_PDEATHSIG = 1


def _load_prctl():
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _die_with(parent: int) -> None:
    """In a forked child: SIGKILL when the worker dies, even by SIGKILL (Linux PR_SET_PDEATHSIG)."""
    import signal

    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the worker died before the request took effect
        os._exit(1)


def _accept(
    conn: socket.socket,
    my_stamp: str,
    listener: socket.socket,
    children: dict,
    stats: dict,
    added_env: dict[str, str],
) -> int | str:
    """Read one request and fork its child: the child's pid, or why not ('stale', 'stop', 'bad', 'status')."""
    if not _same_user(conn):  # only this user's stage processes; nothing is read from others
        conn.close()
        return "bad"
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
    elif len(fds) != 3 or request.get("module") not in stage_modules() or not request.get("argv"):
        verdict = "bad"
    if verdict is not None:
        for fd in fds:
            os.close(fd)
        try:
            _send(
                conn,
                {"status": "declined", "reason": verdict} if verdict != "stop" else {"status": "stopping"},
            )
        except OSError:
            pass
        conn.close()
        return verdict
    conn.settimeout(None)
    worker = os.getpid()
    pid = os.fork()
    if pid == 0:
        _die_with(worker)
        _run_child(request, fds, [listener, conn, *children.values()], added_env)
    for fd in fds:
        os.close(fd)
    stats["served"] += 1
    try:
        _send(conn, {"status": "accepted", "pgid": pid})  # the child leads its own process group
    except OSError:
        _kill_group(pid)
    return pid


def _run_child(
    request: dict, fds: list[int], sockets: list[socket.socket], added_env: dict[str, str]
) -> None:
    """In the forked child: become the stage process that asked, run it, exit with its status."""
    import atexit
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
        from flows.__main__ import run_stage

        sys.argv = [str(Path(request["cwd"]) / "flows" / "__main__.py"), *request["argv"]]
        sys.stdout.reconfigure(line_buffering=sys.stdout.isatty())
        code = run_stage(request["argv"])
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
    try:
        sock = _connect(socket_path(workspace))
    except OSError:
        return None
    try:
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
