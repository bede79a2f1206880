"""Rows of several tasks in one forward pass: per-row zFLoRA adapters on a fused model at its base state.

    mixed = MixedAdapters(fused, {"math": math_weights, "chat": chat_weights})
    swap_adapter(fused, None)                            # every adapter slice zero: the base at width d + w
    with mixed.rows(["math", "math", None, "chat"]):    # one task per batch row (None: the base)
        fused.generate(input_ids, ...)                   # each row runs with its own task's adapter

A zFLoRA adapter lives entirely in the w extra stream channels. With every adapter slice
zero, the fused model's GEMMs compute the base model for every row; what task t adds is
small and local, so forward hooks add it to t's rows only (`swap_adapter` writes the same
values into the slices; `fusion.adapter_slice_values` gives them):

- embedding: channels d:d+r_t of t's rows = (E·P)_t[ids] (the cached product);
- readers (q/k/v/gate/up): + x[..., d:d+r_t] @ B_t^T (an out x r_t block);
- writers (o/down): channels d:d+r_t = z @ A_t^T (an r_t x in block);
- every RMSNorm: adapter channels x sqrt((d+r_t)/(d+w)), the gamma' a swap writes (only
  when a task's r_t is below the fused width w; 1 otherwise, and the hook is not set);
- LM head: its input's base channels + M_t x[d:d+r_t] (M = P tied, Q untied), so the head
  computes W_h (x[:d] + M_t x[d:]): the fused head [W_h, W_h M_t] applied to x, with a
  d x r_t product per task instead of a V x r_t one (the training form's exit).

One low-rank product per adapted projection and run of consecutive rows of one task,
where LoRA needs two; base rows (None) need nothing. Logits equal each task's fused
checkpoint up to float rounding (the products are added after the shared GEMMs, not
inside them). Rows should be ordered by task (the
caller's job) so each task is one run. Nothing per task is copied: the hooks read the
adapter's own tensors and its cached products (converted only when the model's dtype or
device differs, for the duration of one `rows` block).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zflora.errors import ZFLoRAError
from zflora.method.adapter_file import AdapterWeights
from zflora.method.architectures import layout_for
from zflora.method.fusion import adapter_norm_value, adapter_slice_values, fused_meta

Run = tuple[int, int, dict[str, torch.Tensor], float]  # (first row, end row, slot values, norm gamma)


def runs_of(tasks: Sequence[str | None]) -> list[tuple[int, int, str]]:
    """(start, end, task) for each run of consecutive rows of one task; base rows (None) are left out."""
    runs: list[tuple[int, int, str]] = []
    start = 0
    for row in range(1, len(tasks) + 1):
        if row == len(tasks) or tasks[row] != tasks[start]:
            if tasks[start] is not None:
                runs.append((start, row, tasks[start]))
            start = row
    return runs


class MixedAdapters:
    """Per-row adapters for one fused model; `rows(tasks)` sets them for the forwards inside it.

    `adapters` maps task names to `AdapterWeights` of the model's base (checked here, as a
    swap would). The model must sit at its base state (all adapter slices zero) while a
    `rows` block runs: `swap_adapter(fused, None)`.
    """

    def __init__(self, fused: nn.Module, adapters: Mapping[str, AdapterWeights]) -> None:
        meta = fused_meta(fused)
        self.model = fused
        self.d = meta["base_hidden_size"]
        self.tied = bool(meta["tied"])
        self.adapters = dict(adapters)
        layout = layout_for(fused)
        self._embed_path, self._head_path = layout.embed, layout.lm_head
        self._embed = fused.get_submodule(layout.embed)
        self._head = fused.get_submodule(layout.lm_head)
        layers = range(fused.config.num_hidden_layers)
        self._readers = [f"{layout.layers}.{i}.{path}" for i in layers for _, path in layout.readers]
        self._writers = [f"{layout.layers}.{i}.{path}" for i in layers for _, path in layout.writers]
        self._norms = [f"{layout.layers}.{i}.{norm}" for i in layers for norm in layout.norms]
        self._norms.append(layout.final_norm)
        for weights in self.adapters.values():
            adapter_slice_values(fused, weights)  # validates, caches E·P (and W_h·Q)

    def _values(self, task: str, like: torch.Tensor) -> tuple[dict[str, torch.Tensor], float]:
        weights = self.adapters[task]
        values = adapter_slice_values(self.model, weights)  # cached: checks and products run once
        if any(v.dtype != like.dtype or v.device != like.device for v in values.values()):
            values = {k: v.to(like) for k, v in values.items()}  # for this block only
        return values, adapter_norm_value(self.model, weights.config.r)

    @contextlib.contextmanager
    def rows(self, tasks: Sequence[str | None]) -> Iterator[None]:
        """While inside, every forward of the model runs row i with adapter `tasks[i]` (None: base).

        The batch dimension of every forward must be len(tasks), in this order (generate with
        greedy search or sampling keeps it; beam search does not).
        """
        if fused_meta(self.model)["adapter"] is not None:
            raise ZFLoRAError(
                f"the fused model holds adapter {fused_meta(self.model)['adapter']!r}; mixed rows need its "
                "base state: swap_adapter(model, None) first"
            )
        unknown = sorted({t for t in tasks if t is not None and t not in self.adapters})
        if unknown:
            known = ", ".join(sorted(self.adapters)) or "none"
            raise ZFLoRAError(f"unknown task(s) {unknown}; known tasks: {known} (or None for the base model)")
        like = self._embed.weight
        cache: dict[str, tuple[dict[str, torch.Tensor], float]] = {}
        runs: list[Run] = []
        for start, end, task in runs_of(tasks):
            if task not in cache:
                cache[task] = self._values(task, like)
            runs.append((start, end, *cache[task]))
        rows = len(tasks)
        handles = [self._embed.register_forward_hook(self._entry_hook(runs, rows))]
        exit_key = f"{self._embed_path}.P" if self.tied else f"{self._head_path}.Q"
        handles.append(self._head.register_forward_pre_hook(self._exit_hook(runs, rows, exit_key)))
        for path in self._readers:
            if hook := self._reader_hook(runs, rows, f"{path}.B"):
                handles.append(self._hook(path, hook))
        for path in self._writers:
            if hook := self._writer_hook(runs, rows, f"{path}.A"):
                handles.append(self._hook(path, hook))
        if hook := self._norm_hook(runs, rows):
            handles += [self._hook(path, hook) for path in self._norms]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, path: str, hook: Any) -> Any:
        return self.model.get_submodule(path).register_forward_hook(hook)

    @staticmethod
    def _blocks(runs: list[Run], key: str, transpose: bool = True) -> list[tuple[int, int, torch.Tensor]]:
        """(start, end, block) of the runs whose adapter has `key` (transposed for addmm_)."""
        found = [(start, end, values.get(key)) for start, end, values, _ in runs]
        return [
            (start, end, block.t() if transpose else block)
            for start, end, block in found
            if block is not None
        ]

    @staticmethod
    def _flat(x: torch.Tensor, rows: int) -> tuple[torch.Tensor, int]:
        """`x` as (tokens, channels) and the tokens per row; RuntimeError if the batch is not `rows`."""
        if x.shape[0] != rows:
            raise RuntimeError(
                f"a mixed-task forward got a batch of {x.shape[0]} rows, set for {rows}; "
                "generate with one sequence per row (no beam search)"
            )
        flat = x.reshape(-1, x.shape[-1])
        return flat, flat.shape[0] // rows

    def _entry_hook(self, runs: list[Run], rows: int) -> Any:
        """Embedding: t's rows get (E·P)_t[ids] in their adapter channels (zero at the base state)."""
        d, blocks = self.d, self._blocks(runs, "embed", transpose=False)

        def hook(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
            self._flat(out, rows)
            ids = args[0]
            for start, end, product in blocks:
                out[start:end, ..., d : d + product.shape[1]] = F.embedding(ids[start:end], product)
            return out

        return hook

    def _reader_hook(self, runs: list[Run], rows: int, key: str) -> Any:
        """A reader: t's rows get + x[..., d:d+r_t] @ B_t^T."""
        d, blocks = self.d, self._blocks(runs, key)
        if not blocks:
            return None  # no task in this batch adapts this projection

        def hook(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
            x, per_row = self._flat(args[0], rows)
            flat = out.view(-1, out.shape[-1])
            for start, end, block in blocks:
                a, b = start * per_row, end * per_row
                flat[a:b].addmm_(x[a:b, d : d + block.shape[0]], block)
            return out

        return hook

    def _writer_hook(self, runs: list[Run], rows: int, key: str) -> Any:
        """A writer: t's rows get A_t z in their adapter channels (zero at the base state)."""
        d, blocks = self.d, self._blocks(runs, key)
        if not blocks:
            return None

        def hook(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
            z, per_row = self._flat(args[0], rows)
            flat = out.view(-1, out.shape[-1])
            for start, end, block in blocks:
                a, b = start * per_row, end * per_row
                flat[a:b, d : d + block.shape[1]].addmm_(z[a:b], block)
            return out

        return hook

    def _norm_hook(self, runs: list[Run], rows: int) -> Any:
        """Every RMSNorm: t's adapter channels x gamma_t, where gamma_t != 1 (r_t below the fused width)."""
        d = self.d
        scaled = [(start, end, gamma) for start, end, _, gamma in runs if gamma != 1.0]
        if not scaled:
            return None

        def hook(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
            flat, per_row = self._flat(out, rows)
            for start, end, gamma in scaled:
                flat[start * per_row : end * per_row, d:].mul_(gamma)
            return out

        return hook

    def _exit_hook(self, runs: list[Run], rows: int, key: str) -> Any:
        """LM head, in the training form: its input's base channels become x[:d] + M_t x[d:d+r_t].

        The head's adapter columns are zero at the base state, so it computes W_h (x[:d] + M_t x[d:]),
        which equals the fused head [W_h, W_h M_t] applied to x, with one d x r product per
        task instead of a V x r one (M = P tied, Q untied).
        """
        d, blocks = self.d, self._blocks(runs, key)

        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = args[0]
            source, per_row = self._flat(x, rows)
            folded = x.clone()
            flat = folded.view(-1, folded.shape[-1])
            for start, end, block in blocks:
                a, b = start * per_row, end * per_row
                flat[a:b, :d].addmm_(source[a:b, d : d + block.shape[0]], block)
            return (folded, *args[1:])

        return hook
