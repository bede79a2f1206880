"""The registry's MLflow pyfunc model, logged as code (MLflow models-from-code): nothing is pickled.

`tasks/registry.py` logs this file with `mlflow.pyfunc.log_model(python_model=<this path>)`;
MLflow stores it as source in every registered version and executes it on load, where it
calls `mlflow.models.set_model`. The weights are safetensors artifacts next to it:

- `model_config["zflora_kind"] == "multitask"` (`zflora-<base>`): artifact `multitask`, a
  multi-task directory (the fused-width base once + one small adapter per task). Each
  row may name a `task`; a missing or null task gets the base model. `zflora.MultiTaskModel`
  runs the rows: a batch of several tasks in one pass with per-row adapters, a batch of
  one task with its adapter swapped in (`MultiTaskModel.plan` says which batches).
- otherwise (`zflora-<base>-<task>`; `model_config["zflora_task"]` names the task):
  artifact `hf_model`, that task's fused checkpoint. A row may name its own task (or
  none); another task is refused.

Input: a DataFrame (`dataframe_records`) with `prompt` and optional `task`; params
`max_new_tokens` (64) and `batch_size` (16). Output: one completion per row, in order.
A bad request (unknown task, over-long prompt) answers HTTP 400 with one line naming
the known tasks or the fix; the server keeps serving.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import mlflow.models
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

MULTITASK_ARTIFACT = "multitask"
FUSED_ARTIFACT = "hf_model"


class ZFLoRAGenerator(PythonModel):
    """Greedy generation with a zFLoRA model from the registry (multi-task or one fused task)."""

    def load_context(self, context: Any) -> None:
        config = dict(context.model_config or {})
        self.kind = "multitask" if config.get("zflora_kind") == "multitask" else "fused"
        if self.kind == "multitask":
            from zflora.method.multitask import MultiTaskModel

            self.multitask = MultiTaskModel.from_directory(context.artifacts[MULTITASK_ARTIFACT])
        else:
            from zflora.method.loading import load_causal_lm

            self.task = config.get("zflora_task")
            self.model, self.tokenizer = load_causal_lm(context.artifacts[FUSED_ARTIFACT])
            self.lock = threading.Lock()

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would read them as a schema
        from zflora.errors import ZFLoRAError

        params = params or {}
        max_new_tokens = int(params.get("max_new_tokens") or 64)
        batch_size = int(params.get("batch_size") or 16)
        try:
            prompts, tasks = rows_of(model_input)
            if self.kind == "multitask":
                return self.multitask.generate(prompts, tasks, max_new_tokens, batch_size)
            return self._fused(prompts, tasks, max_new_tokens, batch_size)
        except ZFLoRAError as e:
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None

    def _fused(self, prompts: list[str], tasks: list[str | None], max_new_tokens: int, batch_size: int):
        from zflora.errors import ZFLoRAError
        from zflora.harness.generation import generate_text

        for row, task in enumerate(tasks):
            if task is not None and task != self.task:
                raise ZFLoRAError(
                    f"row {row}: this model serves task {self.task!r} only, not {task!r}; "
                    "query the multi-task model zflora-<base> for other tasks"
                )
        with self.lock:  # generate_text sets the tokenizer's padding side: one request at a time
            return generate_text(
                self.model, self.tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size
            )


def _task(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None  # a record without `task`, or `task: null`: the base model
    return str(value)


def rows_of(model_input: Any) -> tuple[list[str], list[str | None]]:
    """(prompts, tasks) from a DataFrame, a dict of columns, a list of records, or a list of prompts."""
    if hasattr(model_input, "columns"):  # a pandas DataFrame from the scoring server
        column = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
        prompts = [str(v) for v in model_input[column].tolist()]
        tasks = model_input["task"].tolist() if "task" in model_input.columns else [None] * len(prompts)
        return prompts, [_task(t) for t in tasks]
    if isinstance(model_input, str):
        return [model_input], [None]
    if isinstance(model_input, dict):
        prompts = model_input.get("prompt", [])
        tasks = model_input.get("task")
        prompts = [prompts] if isinstance(prompts, str) else [str(p) for p in prompts]
        if tasks is None or isinstance(tasks, str):
            tasks = [tasks] * len(prompts)
        return prompts, [_task(t) for t in tasks]
    rows = list(model_input)
    if rows and all(isinstance(r, dict) for r in rows):
        return [str(r.get("prompt", "")) for r in rows], [_task(r.get("task")) for r in rows]
    return [str(r) for r in rows], [None] * len(rows)


mlflow.models.set_model(ZFLoRAGenerator())
