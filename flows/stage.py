"""What every stage entry point shares: argument parsing, params, the Prefect API, exit codes.

A user error (bad params, a wrong path, a mismatched adapter) ends the stage with one
line, `zflora: error: ...`, exit status 2 and no traceback: the flow returns a Failed
state instead of raising, and Prefect's log handlers drop the traceback of a ZFLoRAError.
A bug still shows its traceback and exits with status 1.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

from zflora.errors import ZFLoRAError

from .params import DEFAULT_PARAMS, Params, load_params

USER_ERROR = "UserError"  # name of the Failed state a user error ends a flow run in


class _UserErrorFilter(logging.Filter):
    """Prefect logs task and flow failures with a traceback; for user errors one line is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ZFLoRAError):
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_user_errors() -> None:
    user_filter = _UserErrorFilter()
    loggers = [
        logging.getLogger(name)
        for name in list(logging.Logger.manager.loggerDict)
        if name.startswith("prefect")
    ]
    for logger in [logging.getLogger("prefect"), *loggers]:
        for handler in getattr(logger, "handlers", []):
            if not any(isinstance(f, _UserErrorFilter) for f in handler.filters):
                handler.addFilter(user_filter)


def user_errors_fail(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a flow body: a ZFLoRAError becomes a Failed state with its message (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from prefect.states import Failed

        try:
            return fn(*args, **kwargs)
        except ZFLoRAError as e:
            return Failed(name=USER_ERROR, message=str(e))

    return wrapper


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default=DEFAULT_PARAMS, help="params file (default: params.yaml)")
    return p


def fail(message: str, code: int = 2) -> int:
    print(f"zflora: error: {message}", file=sys.stderr)
    return code


def run(flow: Any, args: argparse.Namespace, **parameters: Any) -> int:
    """Validate params, make sure a Prefect API answers, run `flow`, map its state to an exit code."""
    try:
        load_params(args.params)  # fail fast, before any server or model work
        from .server import ensure_api

        api_url = ensure_api()
    except ZFLoRAError as e:
        return fail(str(e))
    quiet_user_errors()
    state = run_with_api(flow, api_url, params_path=args.params, **parameters)
    return exit_code(state)


def exit_code(state: Any) -> int:
    """0 when completed; 2 with the one-line message of a user error; 1 for anything else."""
    if state.is_completed():
        return 0
    if state.name == USER_ERROR:
        return fail(state.message)
    return fail(f"stage failed: {state.message}", code=1)


def run_with_api(flow: Any, api_url: str | None, **parameters: Any) -> Any:
    """Run `flow` against `api_url` (Prefect read its settings at import, so override them here)."""
    if api_url is None:
        return flow(**parameters, return_state=True)
    import os

    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    os.environ["PREFECT_API_URL"] = api_url  # Prefect's background workers read the environment
    updates: dict[Any, Any] = {PREFECT_API_URL: api_url}
    if os.environ.get("PREFECT_API_AUTH_STRING"):  # set by ensure_api for this workspace's server
        updates[PREFECT_API_AUTH_STRING] = os.environ["PREFECT_API_AUTH_STRING"]
    with temporary_settings(updates=updates):
        return flow(**parameters, return_state=True)


def params_of(params_path: str) -> Params:
    return load_params(params_path)


def check_method_listed(params: Params, method: str, params_path: str) -> str:
    """`method` must be one of train.methods (DVC only runs listed ones; a hand-run stage may not)."""
    if method not in params.train.methods:
        raise ZFLoRAError(
            f"method {method!r} is not in train.methods {params.train.methods} of {params_path}"
        )
    return method
