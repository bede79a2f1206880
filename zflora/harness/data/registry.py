"""The task registry: every task's spec (source, template, answer type, metric) by name.

    from zflora.harness.data import get_task
    task = get_task("gsm8k")
    examples = task.load("test", limit=100)              # hub, or data_dir=<folder> offline
    scores = task.score(completions, examples)           # {"accuracy": ...}

Real tasks read the hub datasets listed in `PAPER_TASKS` (the zFLoRA paper's suite);
embedded tasks are generated offline (`zflora.harness.data.embedded`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from zflora.errors import ZFLoRAError
from zflora.harness.data import embedded, formats, metrics
from zflora.harness.data.example import Example
from zflora.harness.data.hub import HubSource, is_llm_adapters, load_hub_rows, load_local_rows

CATEGORIES = ("commonsense", "math", "summary")


@dataclass(frozen=True)
class TaskSpec:
    """A task: where its rows come from, how they become prompts, and how answers are scored."""

    name: str
    category: str  # "commonsense" | "math" | "summary"
    metric: str  # "accuracy" | "rouge"
    source: str  # hub dataset id, or "embedded"
    description: str
    max_new_tokens: int  # generation budget for evaluation
    answer_type: str = "choice"  # "choice" | "boolean" | "number" | "text" (see zflora.harness.data.metrics)
    letters: str = "ABCDE"  # option letters a "choice" task can answer with
    splits: dict[str, str] = field(default_factory=dict, hash=False)  # split asked for -> hub split
    hub: HubSource | None = field(default=None, repr=False)
    convert: formats.Converter | None = field(default=None, repr=False, compare=False)

    def extract(self, completion: str) -> str:
        """The answer a generated completion gives, in the form of `Example.answer`."""
        if self.answer_type == "choice":
            return metrics.extract_choice(completion, self.letters)
        if self.answer_type == "boolean":
            return metrics.extract_boolean(completion)
        if self.answer_type == "number":
            return metrics.extract_number(completion)
        return metrics.clean_text(completion)

    def score(self, completions: list[str], examples: list[Example]) -> dict[str, float]:
        """{"accuracy": a} or {"rouge1", "rouge2", "rougeL"} (F-measures), all in [0, 1]."""
        if len(completions) != len(examples):
            raise ZFLoRAError(
                f"task {self.name!r}: {len(completions)} completions for {len(examples)} examples; pass one per example"
            )
        predictions = [self.extract(completion) for completion in completions]
        golds = [example.answer for example in examples]
        if self.metric == "rouge":
            return metrics.rouge(predictions, golds)
        return {"accuracy": metrics.accuracy(predictions, golds, self.answer_type)}

    def load(
        self, split: str, data_dir: str | None = None, limit: int | None = None, **options: Any
    ) -> list[Example]:
        """Examples of `split` ("train", "validation" or "test"; see `splits`).

        Embedded tasks take `n` (size) and `seed`; real tasks take `cache_dir` (the
        `datasets` cache) and read `data_dir` instead of the hub when it is given (file
        names: see `zflora.harness.data.hub`). `limit` keeps the first examples (and stops
        converting rows once it has them).
        """
        if split not in self.splits:
            raise ZFLoRAError(f"task {self.name!r} has no split {split!r}; use one of {sorted(self.splits)}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ZFLoRAError(f"limit must be a non-negative integer or None, got {limit!r}")
        if self.source == "embedded":
            return self._generate(split, data_dir, options)[:limit]
        return self._read(split, data_dir, options, limit)

    def _generate(self, split: str, data_dir: str | None, options: dict[str, Any]) -> list[Example]:
        if data_dir is not None:
            raise ZFLoRAError(
                f"task {self.name!r} is generated offline; it reads no data_dir (got {data_dir!r})"
            )
        allowed = {"n", "seed"}
        _reject_unknown(self.name, options, allowed)
        n = options.get("n", embedded.DEFAULT_SIZES[self.name][split])
        seed = options.get("seed", 0)
        for key, value, low in (("n", n, 1), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ZFLoRAError(f"task {self.name!r}: {key} must be an integer >= {low}, got {value!r}")
        rows = embedded.GENERATORS[self.name](split, n, seed)
        return [Example(f"{self.name}-{split}-{i:05d}", p, t, a) for i, (p, t, a) in enumerate(rows)]

    def _read(
        self, split: str, data_dir: str | None, options: dict[str, Any], limit: int | None
    ) -> list[Example]:
        _reject_unknown(self.name, options, {"cache_dir"})
        assert self.hub is not None and self.convert is not None
        hub_split = self.splits[split]
        if data_dir is not None:
            rows = load_local_rows(data_dir, list(dict.fromkeys([split, hub_split])), self.name)
        else:
            rows = load_hub_rows(self.hub, hub_split, self.name, cache_dir=options.get("cache_dir"))
        convert = formats.llm_adapters(self.answer_type) if is_llm_adapters(rows) else self.convert
        examples, skipped = [], 0
        for index, row in enumerate(rows):
            if limit is not None and len(examples) >= limit:
                break
            try:
                converted = convert(row)
            except (KeyError, TypeError, AttributeError) as error:
                raise ZFLoRAError(
                    f"task {self.name!r}: row {index} of split {split!r} does not match the schema of "
                    f"{self.hub.dataset_id} (problem: {error!r}); its keys are {sorted(row)}"
                ) from error
            if converted is None:
                skipped += 1
                continue
            row_id = row.get("id", row.get("ID", row.get("idx")))
            example_id = f"{self.name}-{split}-{row_id if row_id not in (None, '') else index}"
            examples.append(Example(example_id, *converted))
        if len(rows) and not examples and limit != 0:
            raise ZFLoRAError(
                f"task {self.name!r}: none of the {len(rows)} rows of split {split!r} has a gold answer"
            )
        if skipped:
            warnings.warn(
                f"task {self.name!r}: skipped {skipped} row(s) of {split!r} without a gold answer",
                stacklevel=3,
            )
        return examples


def _reject_unknown(task: str, options: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ZFLoRAError(
            f"task {task!r} does not take option(s) {unknown}; it takes {sorted(allowed) or 'none'}"
        )
