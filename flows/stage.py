"""The one skeleton of every pipeline stage: a decorator for the flow, one entry for the CLI.

    @stage_flow("train")
    def train_flow(params: Params, task: str, method: str) -> dict:
        ...                                  # only what the stage does

    python -m flows train --task embedded-math --method zflora [--params params.yaml]

`stage_flow` turns `fn(params, **options)` into the Prefect flow `zflora-<stage>` whose
parameters are the options plus `params_path`: the flow loads and validates the params
file, passes the `Params` object, names its run after the DVC stage
(`train@embedded-math-zflora`) and turns a user error into a Failed state. `main` is the
command line (`python -m flows <stage>`, see flows/__main__.py): `--params` plus one
required `--<option>` per option, params checked before anything starts, attached to
the Prefect API (flows/server.py), the flow run, its state mapped to the exit code.

A user error (bad params, a wrong path, a mismatched adapter) ends the stage with one
line, `zflora: error: ...`, exit status 2 and no traceback: the flow returns a Failed
state instead of raising, and Prefect's log handlers drop the traceback of a ZFLoRAError.
A bug still shows its traceback and exits with status 1.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from tasks.tracking import is_main_process
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
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from prefect.states import Failed

        try:
            return fn(*args, **kwargs)
        except ZFLoRAError as e:
            return Failed(name=USER_ERROR, message=str(e))

    return wrapper


def stage_run_name(stage: str, options: list[str]) -> str:
    """The DVC stage name as a Prefect run-name template: train@{task}-{method}, report."""
    return stage + ("@" + "-".join(f"{{{name}}}" for name in options) if options else "")


def stage_flow(stage: str) -> Callable[[Callable[..., Any]], Any]:
    """Make `fn(params: Params, **options)` the Prefect flow of DVC stage `stage` (see the module doc)."""
    from prefect import flow

    def decorate(fn: Callable[..., Any]) -> Any:
        signature = inspect.signature(fn)
        options = list(signature.parameters.values())[1:]

        def body(*args: Any, **kwargs: Any) -> Any:
            bound = body.__signature__.bind(*args, **kwargs)  # Prefect may pass some positionally
            bound.apply_defaults()
            values = dict(bound.arguments)
            return fn(load_params(values.pop("params_path")), **values)

        body.__name__, body.__qualname__, body.__module__ = fn.__name__, fn.__qualname__, fn.__module__
        body.__doc__ = fn.__doc__
        path = inspect.Parameter(
            "params_path", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=DEFAULT_PARAMS, annotation=str
        )
        body.__signature__ = signature.replace(parameters=[*options, path])  # what Prefect validates
        wrapped = user_errors_fail(body)
        wrapped.__signature__ = body.__signature__
        made = flow(
            name=f"zflora-{stage}",
            log_prints=True,
            flow_run_name=stage_run_name(stage, [o.name for o in options]),
        )(wrapped)
        made.stage = stage
        made.options = [o.name for o in options]
        if fn.__module__ == "__main__":  # `python -m flows.<stage>`: the same as `python -m flows <stage>`
            sys.exit(main(made, (sys.modules["__main__"].__doc__ or stage).splitlines()[0]))
        return made

    return decorate


def fail(message: str, code: int = 2) -> int:
    print(f"zflora: error: {message}", file=sys.stderr)
    return code


def main(flow: Any, description: str, argv: list[str] | None = None) -> int:
    """The stage's command line: parse, validate params, attach to Prefect, run, map the exit code."""
    from .server import attached, ensure_api

    parser = argparse.ArgumentParser(prog=f"python -m flows {flow.stage}", description=description)
    parser.add_argument("--params", default=DEFAULT_PARAMS, help="params file (default: params.yaml)")
    for option in flow.options:
        parser.add_argument(f"--{option}", required=True)
    args = parser.parse_args(argv)
    options = {option: getattr(args, option) for option in flow.options}
    try:
        load_params(args.params)  # fail fast, before any server or model work
        if not is_main_process() or os.environ.get("ZFLORA_PREFECT_MODE") == "off":
            # torchrun / accelerate: the other ranks join the same Trainer (DDP) without a Prefect
            # flow run or MLflow run of their own; rank 0 orchestrates and logs. A pool worker's
            # stage: its flow run is the worker's, which shows this output as its log (flows/pool.py)
            return exit_code(as_state(flow.fn(**options, params_path=args.params)))
        api_url = ensure_api()
    except ZFLoRAError as e:
        return fail(str(e))
    quiet_user_errors()
    with attached(api_url):
        state = flow(**options, params_path=args.params, return_state=True)
    return exit_code(state)


def as_state(result: Any) -> Any:
    from prefect.states import Completed, State

    return result if isinstance(result, State) else Completed()


def exit_code(state: Any) -> int:
    """0 when completed; 2 with the one-line message of a user error; 1 for anything else."""
    if state.is_completed():
        return 0
    if state.name == USER_ERROR:
        return fail(state.message)
    return fail(f"stage failed: {state.message}", code=1)


def check_method_listed(params: Params, method: str, params_path: str = DEFAULT_PARAMS) -> str:
    """`method` must be one of train.methods (DVC only runs listed ones; a hand-run stage may not)."""
    if method not in params.train.methods:
        raise ZFLoRAError(
            f"method {method!r} is not in train.methods {params.train.methods} of {params_path}"
        )
    return method
