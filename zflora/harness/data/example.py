"""One task example: the unit every split, training set and evaluation reads and writes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    """One prompt / target pair with the gold answer used for scoring."""

    id: str
    prompt: str  # the full prompt (template applied); ends where the answer starts
    target: str  # what the model learns to produce after the prompt (no EOS token)
    answer: str  # gold answer: option letter / "true" / number string / reference summary
