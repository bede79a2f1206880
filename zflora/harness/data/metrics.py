"""Answer extraction from generated completions, and the scores: accuracy and ROUGE.

Four answer types cover the task suite:
- "choice": an option letter ("A".."E"); also understands "(b)", "The answer is C",
  and LLM-Adapters style "answer2" / "option2" / "ending2" / "solution2".
- "boolean": "true" / "false" (also from "yes" / "no").
- "number": the final number ("The answer is 1,234." -> "1234"); compared numerically.
- "text": the completion's first line, cleaned, scored with ROUGE-1/2/L F-measures.
"""

from __future__ import annotations

import math
import re

ANSWER_TYPES = ("choice", "boolean", "number", "text")

# an upper-case letter, or a lower-case one only in "(b)" / "b)" form, so "a" in prose never counts
_LETTER = r"(?:\(([A-Ea-e])\)|([A-E])(?=[).:,]|\s|$)|([a-e])\))"
_ANSWER_IS = re.compile(r"(?i:answer\s+is)\s*:?\s*" + _LETTER)
_NUMBERED_OPTION = re.compile(r"\b(?:answer|option|ending|solution)\s*([1-5])\b", re.IGNORECASE)
_LEADING_LETTER = re.compile(r"^\s*" + _LETTER)
_LONE_LETTER = re.compile(r"\b([A-E])\b")
_BOOLEAN = re.compile(r"\b(true|false|yes|no)\b", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_ANSWER_NUMBER = re.compile(r"answer\s+is\s*:?\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?|-?\.\d+)", re.IGNORECASE)


def extract_choice(completion: str, letters: str = "ABCDE") -> str:
    """The option letter a completion picks, or "" when it names none of `letters`."""
    candidates = [_letter(m) for m in _ANSWER_IS.finditer(completion)]
    if candidates and candidates[-1] in letters:
        return candidates[-1]
    numbered = _NUMBERED_OPTION.search(completion)
    if numbered:
        letter = "ABCDE"[int(numbered.group(1)) - 1]
        if letter in letters:
            return letter
    leading = _LEADING_LETTER.match(completion)
    if leading and _letter(leading) in letters:
        return _letter(leading)
    for match in _LONE_LETTER.finditer(completion):
        if match.group(1) in letters:
            return match.group(1)
    return ""


def _letter(match: re.Match) -> str:
    return next(group for group in match.groups() if group).upper()


def extract_boolean(completion: str) -> str:
    """'true' or 'false' from the first yes/no/true/false word, or ""."""
    match = _BOOLEAN.search(completion)
    if not match:
        return ""
    return "true" if match.group(1).lower() in ("true", "yes") else "false"


def normalize_number(text: str) -> str:
    """A canonical number string: '1,234.0' -> '1234', '0.50' -> '0.5'; "" when not a number."""
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(cleaned)
    except ValueError:
        return ""
    if not math.isfinite(value):
        return ""
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(round(value, 6)).rstrip("0").rstrip(".")


def extract_number(completion: str) -> str:
    """The final answer of a math completion: after "The answer is" if present, else the last number."""
    stated = _ANSWER_NUMBER.findall(completion)
    if stated:
        return normalize_number(stated[0])
    numbers = _NUMBER.findall(completion)
    return normalize_number(numbers[-1]) if numbers else ""


def clean_text(completion: str) -> str:
    """A generated summary: its first line (references are one line), whitespace collapsed."""
    first = completion.strip().split("\n")[0]
    return " ".join(first.split())


def numbers_equal(predicted: str, gold: str) -> bool:
    """Numeric equality after normalisation, with a small relative tolerance."""
    a, b = normalize_number(predicted), normalize_number(gold)
    if not a or not b:
        return False
    return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)


def accuracy(predictions: list[str], golds: list[str], answer_type: str) -> float:
    """Share of predictions equal to the gold answers (numbers compared numerically)."""
    if not golds:
        return 0.0
    if answer_type == "number":
        hits = sum(numbers_equal(p, g) for p, g in zip(predictions, golds))
    else:
        hits = sum(p.strip().lower() == g.strip().lower() for p, g in zip(predictions, golds))
    return hits / len(golds)


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures (rouge-score, Porter stemming), each in [0, 1]."""
    from rouge_score import rouge_scorer

    keys = ("rouge1", "rouge2", "rougeL")
    if not references:
        return dict.fromkeys(keys, 0.0)
    scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
    totals = dict.fromkeys(keys, 0.0)
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)
        for key in keys:
            totals[key] += scores[key].fmeasure
    return {key: totals[key] / len(references) for key in keys}
