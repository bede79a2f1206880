"""Many task adapters on one fused model: mixed batches in one pass, or in-place swaps per task.

    mt = zflora.MultiTaskModel(fused, {"math": "adapters/math", "chat": "adapters/chat"})
    mt.generate(prompts, tasks=["math", None, "chat"])     # None -> the exact base model

`fused` is a fused model (its tokenizer is loaded from the directory it came from, or
pass `tokenizer=`) or a fused checkpoint directory.

Every adapter is read, validated against the fused model (base fingerprint, r <= width)
and preloaded once, with its embedding product E·P cached. `generate` sorts the rows by
task and runs them in the batches `plan` gives (`plan_batches`: packed across tasks when
that needs fewer batches, else one task per batch):

- a batch of several tasks (the base among them) runs once per decoding step on the
  model at its base state, each row with its own task's adapter blocks added by
  `zflora.method.mixed.MixedAdapters`: one low-rank product per adapted projection;
- a batch of one task swaps that task's adapter in (`swap_adapter`, a pure copy of the
  adapter slices) and runs the plain fused model, bit-identical to the task's own fused
  checkpoint.

Completions come back in input order; `last_batches` records which path each batch took.
A mixed row's logits equal its task's fused checkpoint's up to float rounding (the
adapter's product is added after the shared GEMM instead of inside it). A lock serialises
swaps and generation, so concurrent callers (threads of a server) never see each other's
adapter.

On disk, a multi-task directory (what the MLflow registry stores):

    multitask.json     {"format": "zflora-multitask", "format_version": 1, "tasks": {...}, ...}
    base/              the fused-width base with a zero adapter (stock transformers + tokenizer)
    adapters/<task>/   adapter_model.safetensors + adapter_config.json (safetensors only)
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from zflora.errors import ZFLoRAError
from zflora.method.adapter_file import AdapterWeights, read_adapter, write_adapter
from zflora.method.atomic import atomic_dir
from zflora.method.generation import generate_text
from zflora.method.gguf.sidecar import copy_sidecar
from zflora.method.mixed import MixedAdapters

FORMAT = "zflora-multitask"
FORMAT_VERSION = 1
MANIFEST = "multitask.json"
BASE_DIR = "base"
ADAPTERS_DIR = "adapters"
PLAN_MODES = ("auto", "grouped", "packed")
_TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def is_multitask_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def check_task_name(task: Any) -> str:
    if not isinstance(task, str) or not _TASK_NAME.match(task):
        raise ZFLoRAError(
            f"task name {task!r} is not valid; use letters, digits, '.', '_' or '-' (it names a directory)"
        )
    return task


def plan_batches(
    tasks: Sequence[str | None], batch_size: int = 16, first: str | None = None, mode: str = "auto"
) -> list[list[int]]:
    """Batches of row indices for rows of these tasks: per-task batches, or task-sorted packed ones.

    Rows are ordered by task (`first`'s rows first, then tasks by first appearance). Grouped:
    each task's rows cut into batches of `batch_size`, every batch one task (a swap and the
    plain fused model). Packed: the same order cut into batches of `batch_size`, so a batch
    may span several tasks (one pass with per-row adapters). The rule (`mode="auto"`): pack
    when packing needs fewer batches (sum of ceil(n_t / B) over tasks > ceil(N / B)), else
    group; "grouped" and "packed" force one (benchmarks compare them).

    Where it comes from: benchmarks/mixed_rule.py (results/mixed-rule-2026-12-07.md; one CPU
    thread, batches of 16, K = 2-32 tasks of 1-17 rows each, tiny and SmolLM2-135M shapes)
    times both plans. A decoding step costs much more than its rows' share, so a batch saved
    is worth a lot, while a mixed batch pays only its hooks' small products (one batch of 16
    rows at the SmolLM2 shape, results/mixed-overhead-2026-12-07.md: 0.96-0.99x the plain
    fused model with 1-4 tasks, 1.03x with 8, 1.18x with 16). Packing won wherever it saved
    many batches (SmolLM2, 16 tasks x 1 row: 0.26 of the grouped time; 8 x 4: 0.46), and the
    rule picked the faster plan or one within 5 % in 50 of 53 configurations. The misses: at
    the tiny shape (d = 128), 16 or 32 tasks of 15 rows, where packing saves one or two
    batches but mixes all of them, and the hooks cost 24 % of a batch plus about 6 % per
    task there (packed 1.21x slower); and at the SmolLM2 shape 8 tasks x 15 rows (equal
    batch counts), where packed was 18 % faster because this CPU runs a 16-row batch faster
    than a 15-row one. With equal counts grouping keeps every row bit-identical to its
    task's checkpoint.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ZFLoRAError(f"batch_size must be a positive integer, got {batch_size!r}")
    if mode not in PLAN_MODES:
        raise ZFLoRAError(f"plan mode must be one of {', '.join(PLAN_MODES)}, got {mode!r}")
    groups: dict[str | None, list[int]] = {}
    for row, task in enumerate(tasks):
        groups.setdefault(task, []).append(row)
    order = sorted(groups, key=lambda t: t != first)  # stable: `first` leads, then first appearance
    grouped = [groups[t][i : i + batch_size] for t in order for i in range(0, len(groups[t]), batch_size)]
    rows = [row for t in order for row in groups[t]]
    packed = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    if mode == "auto":
        mode = "packed" if len(packed) < len(grouped) else "grouped"
    return packed if mode == "packed" else grouped


class MultiTaskModel:
    """One fused zFLoRA model serving several task adapters; `generate(prompts, tasks)` routes rows by task.

    `fused` is any fused model of the adapters' base, or its checkpoint directory (its
    current adapter is discarded: the model is left on the base, a zero adapter). Without
    `tokenizer=`, the tokenizer saved next to the model is used. `adapters` maps task names to adapter
    directories or `AdapterWeights`. The model is owned by this object from then on:
    swap it only through `generate`/`use`, or the active-task bookkeeping goes stale.

    A request whose rows belong to several tasks runs as one batch per decoding step (up to
    `batch_size` rows) with per-row adapters; a batch of one task runs the plain fused model
    with that adapter swapped in. Which batches: `plan` (the rule and its measurement are in
    `plan_batches`). Per task it holds the adapter's own tensors and its cached E·P (and W_h·Q
    for an untied head), never a copy of a base-sized matrix.
    """

    def __init__(
        self,
        fused: nn.Module | str | Path,
        adapters: Mapping[str, str | Path | AdapterWeights],
        tokenizer: Any = None,
    ) -> None:
        from zflora.method.fusion import fused_meta, swap_adapter
        from zflora.method.loading import load_causal_lm

        if isinstance(fused, (str, Path)):  # a fused checkpoint directory: model and tokenizer
            fused, loaded = load_causal_lm(fused)
            tokenizer = tokenizer if tokenizer is not None else loaded
        self.meta = dict(fused_meta(fused))
        # a serving object: frozen and in eval mode (parameters that require grad also make
        # torch pick other GEMM paths for some shapes, a cost PEFT's frozen models do not pay)
        self.model = fused.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self._lock = threading.RLock()
        device = next(fused.parameters()).device
        self.adapters: dict[str, AdapterWeights] = {}
        for task, adapter in adapters.items():
            check_task_name(task)
            weights = read_adapter(adapter) if isinstance(adapter, (str, Path)) else adapter
            if not isinstance(weights, AdapterWeights):
                raise ZFLoRAError(
                    f"task {task!r}: expected an adapter directory or AdapterWeights, got {type(adapter).__name__}"
                )
            if any(t.device != device for t in weights.tensors.values()):
                weights = weights.to(device)
            try:  # validates (fingerprint, r <= width, shapes, finite values) and caches E·P
                swap_adapter(fused, weights)
            except ZFLoRAError as e:
                swap_adapter(fused, None)
                raise ZFLoRAError(f"task {task!r}: {e}") from None
            self.adapters[task] = weights
        swap_adapter(fused, None)
        self.active: str | None = None
        self.mixed = MixedAdapters(fused, self.adapters)
        self.last_batches: list[tuple[str, list[str | None]]] = []

    @property
    def tasks(self) -> list[str]:
        return sorted(self.adapters)

    @classmethod
    def from_directory(
        cls,
        path: str | Path,
        dtype: str | None = None,
        device: str | None = None,
        trust_remote_code: bool = False,
    ) -> MultiTaskModel:
        """Load a multi-task directory written by `save` (base checkpoint + adapters)."""
        from zflora.method.loading import load_causal_lm

        path = Path(path)
        manifest = read_manifest(path)
        model, tokenizer = load_causal_lm(
            path / BASE_DIR, dtype=dtype, device=device, trust_remote_code=trust_remote_code
        )
        adapters = {task: path / ADAPTERS_DIR / task for task in manifest["tasks"]}
        return cls(model, adapters, tokenizer)

    def use(self, task: str | None) -> None:
        """Make `task` (None: the base) the active adapter; a no-op when it already is."""
        from zflora.method.fusion import swap_adapter

        if task is not None and task not in self.adapters:
            raise ZFLoRAError(self._unknown(task))
        with self._lock:
            if task != self.active:
                swap_adapter(self.model, None if task is None else self.adapters[task])
                self.active = task

    def plan(self, tasks: Sequence[str | None], batch_size: int = 16) -> list[list[int]]:
        """The batches (row indices, in the order they run) that `generate` makes of these rows.

        See `plan_batches`; the active task's rows come first, so its batches need no swap.
        """
        return plan_batches(tasks, batch_size, first=self.active)

    def generate(
        self,
        prompts: Sequence[str],
        tasks: Sequence[str | None] | str | None = None,
        max_new_tokens: int = 64,
        batch_size: int = 16,
        chat: bool = True,
    ) -> list[str]:
        """Greedy completions in input order; row i runs with adapter `tasks[i]` (None: the base).

        The rows run in the batches `plan` gives. A batch of one task swaps that task's adapter
        in and runs the plain fused model; a batch of several tasks (the base among them) runs
        once at the base state with per-row adapters (`zflora.method.mixed`). `last_batches`
        records what ran: one (path, tasks) pair per batch, path "swap" or "mixed". `chat` as in
        `generate_text`: a tokenizer's chat template formats each prompt (False: the raw text).
        """
        if self.tokenizer is None:
            self.tokenizer = self._saved_tokenizer()
        prompts = list(prompts)
        if tasks is None or isinstance(tasks, str):
            tasks = [tasks] * len(prompts)
        tasks = list(tasks)
        if len(tasks) != len(prompts):
            raise ZFLoRAError(f"got {len(prompts)} prompts but {len(tasks)} tasks; give one task per prompt")
        for row, task in enumerate(tasks):
            if task is not None and task not in self.adapters:
                raise ZFLoRAError(f"row {row}: {self._unknown(task)}")
        completions: list[str | None] = [None] * len(prompts)
        with self._lock:
            self.last_batches = []
            for rows in self.plan(tasks, batch_size):
                batch_tasks = [tasks[i] for i in rows]
                mixed = len(set(batch_tasks)) > 1
                self.use(None if mixed else batch_tasks[0])
                with self.mixed.rows(batch_tasks) if mixed else contextlib.nullcontext():
                    texts = generate_text(
                        self.model,
                        self.tokenizer,
                        [prompts[i] for i in rows],
                        max_new_tokens=max_new_tokens,
                        batch_size=len(rows),
                        chat=chat,
                        labels=[f"row {i} (task {tasks[i] or 'base'})" for i in rows],
                    )
                self.last_batches.append(("mixed" if mixed else "swap", batch_tasks))
                for i, text in zip(rows, texts):
                    completions[i] = text
        return completions  # type: ignore[return-value]

    def save(self, path: str | Path) -> Path:
        """Write the multi-task directory atomically: the base once, each adapter as small files."""
        with self._lock, atomic_dir(path) as tmp:
            self.use(None)
            self.model.save_pretrained(tmp / BASE_DIR)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp / BASE_DIR)
            # a base that came from a GGUF keeps that file's tokenizer for `zflora export-gguf`
            copy_sidecar(getattr(self.model.config, "_name_or_path", "") or "", tmp / BASE_DIR)
            for task, weights in self.adapters.items():
                write_adapter(tmp / ADAPTERS_DIR / task, weights)
            (tmp / MANIFEST).write_text(json.dumps(self.manifest(), indent=2, sort_keys=True) + "\n")
        return Path(path)

    def manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "base_hidden_size": self.meta["base_hidden_size"],
            "width": self.meta["width"],
            "architecture": type(self.model).__name__,
            "tasks": {
                task: {"adapter_name": w.name, "r": w.config.r, "blocks": list(w.config.blocks)}
                for task, w in sorted(self.adapters.items())
            },
        }

    def _saved_tokenizer(self) -> Any:
        """The tokenizer saved next to the fused model (from_pretrained records its directory)."""
        from zflora.method.loading import load_tokenizer

        source = getattr(self.model.config, "_name_or_path", "") or ""
        if source and Path(source).is_dir() and any(Path(source).glob("tokenizer*")):
            return load_tokenizer(source)
        raise ZFLoRAError(
            "MultiTaskModel has no tokenizer; pass tokenizer=, or a fused model directory that holds one"
        )

    def _unknown(self, task: Any) -> str:
        known = ", ".join(self.tasks) or "none"
        return f"unknown task {task!r}; known tasks: {known} (or null/None for the base model)"


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The validated `multitask.json` of a multi-task directory."""
    path = Path(path)
    file = path / MANIFEST
    if not file.is_file():
        raise ZFLoRAError(
            f"{str(path)!r} is not a multi-task model directory (no {MANIFEST}); write one with MultiTaskModel.save"
        )
    try:
        manifest = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ZFLoRAError(f"{str(file)!r} is not valid JSON ({e}); write the directory again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ZFLoRAError(f"{str(file)!r} is not a zflora multi-task manifest; write the directory again")
    if not isinstance(manifest.get("format_version"), int) or manifest["format_version"] > FORMAT_VERSION:
        raise ZFLoRAError(
            f"{str(file)!r} has format_version {manifest.get('format_version')!r}, "
            f"newer than this zflora understands ({FORMAT_VERSION}); upgrade zflora"
        )
    tasks = manifest.get("tasks")
    if not isinstance(tasks, dict):
        raise ZFLoRAError(
            f"{str(file)!r}: 'tasks' must map task names to adapters; write the directory again"
        )
    for task in tasks:
        check_task_name(task)
        if not (path / ADAPTERS_DIR / task).is_dir():
            raise ZFLoRAError(
                f"{str(path)!r} lists task {task!r} but has no {ADAPTERS_DIR}/{task}/; write the directory again"
            )
    return manifest
