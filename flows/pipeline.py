"""The whole pipeline as one Prefect flow that drives DVC, so every run is versioned and cached.

    python -m flows.pipeline                              # = dvc repro
    python -m flows.pipeline -S train.epochs=2 -S adapter.r=32   # = dvc exp run --set-param ...
    python -m flows.pipeline --target train               # one stage (and what it needs)

The Prefect UI deployments (flows/serve.py) run this flow; with parameter overrides it
runs `dvc exp run --set-param ...`, so a UI-triggered run is recorded as a DVC experiment
and reuses DVC's cache like `dvc repro`. Runs in one workspace are serialised with a file
lock: a second run waits for the first instead of tripping over DVC's own lock.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from zflora.errors import ZFLoRAError

from .stage import exit_code, fail, quiet_user_errors, run_with_api, user_errors_fail

LOCK_FILE = Path(".dvc") / "tmp" / "zflora-pipeline.lock"


def dvc_command(
    set_params: dict[str, Any] | None, targets: list[str] | None, experiment: str | None, force: bool
) -> list[str]:
    """`dvc repro` without overrides; `dvc exp run --set-param k=v ...` with them (or with a name)."""
    overrides = [f"{key}={_yaml_value(value)}" for key, value in (set_params or {}).items()]
    if overrides or experiment:
        cmd = ["dvc", "exp", "run"]
        for override in overrides:
            cmd += ["--set-param", override]
        if experiment:
            cmd += ["--name", experiment]
    else:
        cmd = ["dvc", "repro"]
    if force:
        cmd.append("--force")
    return cmd + list(targets or [])


def _yaml_value(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value)


def _stream(cmd: list[str], logger: Any) -> tuple[int, list[str]]:
    tail: deque[str] = deque(maxlen=30)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1
    )
    assert process.stdout is not None
    for line in process.stdout:
        line = line.rstrip()
        if line and "\r" not in line:  # progress bars redraw with \r; keep the log readable
            logger.info(line)
            tail.append(line)
    return process.wait(), list(tail)


@flow(name="zflora-pipeline", log_prints=True)
@user_errors_fail
def pipeline_flow(
    set_params: dict[str, Any] | None = None,
    targets: list[str] | None = None,
    experiment: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Run the DVC pipeline (or some `targets`) with optional params overrides, e.g. {"adapter.r": 32}."""
    logger = get_run_logger()
    cmd = dvc_command(set_params, targets, experiment, force)
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("another pipeline run holds this workspace; waiting for it to finish")
            fcntl.flock(lock, fcntl.LOCK_EX)
        logger.info("running: " + " ".join(cmd))
        start = time.perf_counter()
        code, tail = _stream(cmd, logger)
    seconds = round(time.perf_counter() - start, 1)
    if code != 0:
        reason = next((line for line in reversed(tail) if "error" in line.lower()), tail[-1] if tail else "")
        raise ZFLoRAError(f"`{' '.join(cmd)}` failed with exit code {code} after {seconds} s: {reason}")
    return {"command": cmd, "seconds": seconds}


def _parse_set(items: list[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        if "=" not in item:
            raise ZFLoRAError(f"-S expects key=value (e.g. -S train.epochs=2), got {item!r}")
        key, value = item.split("=", 1)
        pairs[key] = value
    return pairs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "-S", "--set-param", action="append", default=[], help="params override key=value (dvc exp run)"
    )
    p.add_argument("--target", action="append", default=[], help="stage to run (default: all)")
    p.add_argument("--name", default=None, help="DVC experiment name")
    p.add_argument("--force", action="store_true", help="rerun stages even if nothing changed")
    args = p.parse_args(argv)
    try:
        overrides = _parse_set(args.set_param)
        from .server import ensure_api

        api_url = ensure_api()
    except ZFLoRAError as e:
        return fail(str(e))
    quiet_user_errors()
    state = run_with_api(
        pipeline_flow,
        api_url,
        set_params=overrides,
        targets=args.target,
        experiment=args.name,
        force=args.force,
    )
    return exit_code(state)


if __name__ == "__main__":
    sys.exit(main())
