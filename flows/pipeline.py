"""The whole pipeline as one Prefect flow that drives DVC, so every run is versioned and cached.

    python -m flows.pipeline                              # = dvc repro
    python -m flows.pipeline -S train.epochs=2 -S adapter.r=32   # = dvc exp run --set-param ...
    python -m flows.pipeline --target train               # one stage (and what it needs)
    python -m flows.pipeline --pool zflora [-S ...]        # the DAG on a Prefect work pool (flows/pool.py)

The Prefect UI deployments (flows/serve.py) run this flow; with parameter overrides it
runs `dvc exp run --set-param ...`, so a UI-triggered run is recorded as a DVC experiment
and reuses DVC's cache like `dvc repro`. Runs in one workspace are serialised with a file
lock: a second run waits for the first instead of tripping over DVC's own lock.

A run that does not come from this command line (a deployment run, from the UI or the
API) may override only the experiment knobs (UI_ALLOWED: adapter.*, train.*, tune.*,
evaluate.*, profile.*, data.train_size, data.validation_size, data.test_size) plus what the operator allowed with
`python -m flows.serve --allow-param KEY`; `model.*` (which model, and whether its code
runs) and `data.data_dir` need that. Every run's `targets` must be stage names of
dvc.yaml. A refused run fails with one line and starts no DVC command.
"""

from __future__ import annotations

import argparse
import fcntl
import math
import os
import re
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from zflora.errors import ZFLoRAError

from .stage import exit_code, fail, quiet_user_errors, user_errors_fail

LOCK_FILE = Path(".dvc") / "tmp" / "zflora-pipeline.lock"
# what a deployment run (Prefect UI or API) may override; `flows.serve --allow-param` adds more
UI_ALLOWED = (
    "adapter.*",
    "train.*",
    "tune.*",
    "evaluate.*",
    "profile.*",
    "data.train_size",
    "data.validation_size",
    "data.test_size",
)
ALLOW_ENV = "ZFLORA_SERVE_ALLOW"  # set by flows.serve from its --allow-param options
_KEY = re.compile(r"[a-z][a-z0-9_]*(\.[A-Za-z0-9_-]+)+")
ALLOW_PATTERN = re.compile(r"[a-z][a-z0-9_]*(\.[A-Za-z0-9_-]+)*(\.\*)?|\*")
_TEXT = re.compile(r"[A-Za-z0-9_.+-]{0,200}")  # a string value: no quoting, no YAML/Hydra syntax
_TARGET = re.compile(r"(?P<stage>[A-Za-z0-9_-]+)(@[A-Za-z0-9_.-]+)?")
_EXPERIMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_operator = False  # True when main() runs: the command line is the operator's own


def allowed(key: str, patterns: tuple[str, ...] | list[str]) -> bool:
    return any(p == "*" or key == p or (p.endswith(".*") and key.startswith(p[:-1])) for p in patterns)


def ui_allowed() -> tuple[str, ...]:
    """UI_ALLOWED plus what the operator allowed on `flows.serve`'s command line."""
    extra = [p for p in os.environ.get(ALLOW_ENV, "").split(",") if p]
    return (*UI_ALLOWED, *extra)


def _safe_value(value: Any) -> bool:
    if value is None or isinstance(value, bool | int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return _TEXT.fullmatch(value) is not None
    if isinstance(value, list):
        return len(value) <= 100 and all(_safe_value(v) for v in value)
    if isinstance(value, dict):
        return len(value) <= 100 and all(
            isinstance(k, str) and _TEXT.fullmatch(k) and _safe_value(v) for k, v in value.items()
        )
    return False


def stage_names(dvc_file: Path = Path("dvc.yaml")) -> list[str]:
    import yaml

    try:
        stages = (yaml.safe_load(dvc_file.read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError) as e:
        raise ZFLoRAError(
            f"cannot read the stage names from {dvc_file} ({e}); run from the project root"
        ) from e
    return list(stages)


def check_request(
    set_params: dict[str, Any] | None,
    targets: list[str] | None,
    experiment: str | None,
    allow: tuple[str, ...] | None,
) -> None:
    """Refuse, with one line, what must not reach `dvc`; `allow` None: any params key (operator)."""
    names = stage_names()
    for target in targets or []:
        match = _TARGET.fullmatch(target) if isinstance(target, str) else None
        if match is None or match["stage"] not in names:
            raise ZFLoRAError(
                f"targets: {target!r} is not a stage of dvc.yaml; use one of {', '.join(names)} "
                "(or <stage>@<item>, e.g. train@embedded-math-zflora)"
            )
    if experiment is not None and not (isinstance(experiment, str) and _EXPERIMENT.fullmatch(experiment)):
        raise ZFLoRAError(
            f"experiment: {experiment!r} is not a valid experiment name; use letters, digits, '.', '_' and '-'"
        )
    for key, value in (set_params or {}).items():
        if not (isinstance(key, str) and _KEY.fullmatch(key)):
            raise ZFLoRAError(
                f"set_params: {key!r} is not a params key; write dotted names such as adapter.r"
            )
        if allow is None:
            continue
        if not allowed(key, allow):
            raise ZFLoRAError(
                f"set_params: {key!r} cannot be set from a Prefect UI or API run (allowed: {', '.join(allow)}); "
                f"the operator can allow it with `python -m flows.serve --allow-param {key}`"
            )
        if not _safe_value(value):
            raise ZFLoRAError(
                f"set_params: the value of {key!r} ({value!r}) is not allowed from a Prefect UI or API run; "
                "use numbers, true/false, or plain words (letters, digits, . _ + -)"
            )


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
    pool: str | None = None,
) -> dict[str, Any]:
    """Run the DVC pipeline (or some `targets`) with optional params overrides, e.g. {"adapter.r": 32}:
    here with DVC, one stage after another, or with `pool` on that Prefect work pool (flows/pool.py)."""
    logger = get_run_logger()
    check_request(set_params, targets, experiment, allow=None if _operator else ui_allowed())
    if pool is not None and not (isinstance(pool, str) and _EXPERIMENT.fullmatch(pool)):
        raise ZFLoRAError(f"pool: {pool!r} is not a work pool name; use letters, digits, '.', '_' and '-'")
    if pool is not None and force:
        raise ZFLoRAError("--force is for `dvc repro`; a pool run reruns what DVC reports out of date")
    cmd = dvc_command(set_params, targets, experiment, force)
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("another pipeline run holds this workspace; waiting for it to finish")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if pool is not None:
            from .pool import coordinate

            overrides = {key: _yaml_value(value) for key, value in (set_params or {}).items()}
            return coordinate(pool, overrides, targets, experiment, logger)
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
    p.add_argument(
        "--pool",
        default=None,
        metavar="NAME",
        help="run the stages on this Prefect work pool, in parallel (make cluster starts one: zflora)",
    )
    args = p.parse_args(argv)
    global _operator
    _operator = True  # this command line may override any params key (targets are still checked)
    from .server import attached, ensure_api

    try:
        overrides = _parse_set(args.set_param)
        api_url = ensure_api()
    except ZFLoRAError as e:
        return fail(str(e))
    quiet_user_errors()
    with attached(api_url):
        state = pipeline_flow(
            set_params=overrides,
            targets=args.target,
            experiment=args.name,
            force=args.force,
            pool=args.pool,
            return_state=True,
        )
    return exit_code(state)


if __name__ == "__main__":
    sys.exit(main())
