"""Prompt templates: one converter per real task, from a row in the hub schema to an Example.

Conventions shared by every task (and the embedded ones):
- multiple choice: "Question: ...\\nA. ...\\nB. ...\\nAnswer:" -> target " B", answer "B";
- BoolQ: "Passage: ...\\nQuestion: ...?\\nAnswer:" -> " true" / " false";
- math: "Question: ...\\nAnswer:" -> " <worked solution> The answer is N." (GSM8K) or
  " The answer is N." (datasets with a bare number), answer "N";
- summaries: "Article: ...\\nSummary:" or "Dialogue:\\n...\\nSummary:" -> " <reference>".
The prompt ends where the answer starts; the target starts with a space and has no EOS.
A converter returns None for a row without a gold answer (e.g. a hidden test label).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from zflora.harness.data.embedded import LETTERS, mc_prompt
from zflora.harness.data.metrics import normalize_number

Row = dict[str, Any]
Converted = tuple[str, str, str]  # prompt, target, answer
Converter = Callable[[Row], "Converted | None"]


def _text(value: Any) -> str:
    return " ".join(str(value).split()) if value is not None else ""


def _mc(question: str, options: list[str], index: int | None) -> Converted | None:
    if index is None or not 0 <= index < len(options):
        return None
    letter = LETTERS[index]
    return mc_prompt(_text(question), [_text(o) for o in options]), f" {letter}", letter


def _int_or_none(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def _math(question: str, number: Any, solution: str = "") -> Converted | None:
    answer = normalize_number(str(number))
    if not answer:
        return None
    lead = f" {solution.strip()}" if solution.strip() else ""
    return f"Question: {_text(question)}\nAnswer:", f"{lead} The answer is {answer}.", answer


def _summary(header: str, source: str, reference: str, keep_lines: bool = False) -> Converted | None:
    reference = _text(reference)
    if not reference:
        return None
    if keep_lines:  # dialogues: one turn per line
        body = "\n".join(line.strip() for line in str(source).strip().splitlines() if line.strip())
    else:
        body = _text(source)
    separator = "\n" if keep_lines else " "
    return f"{header}:{separator}{body}\nSummary:", f" {reference}", reference


# ----------------------------------------------------------------------------- commonsense


def boolq(row: Row) -> Converted | None:
    answer = row.get("answer", row.get("label"))
    if isinstance(answer, str):
        answer = {"true": True, "false": False, "1": True, "0": False}.get(answer.strip().lower())
    if answer is None:
        return None
    question = _text(row["question"]).rstrip("?")
    label = "true" if bool(answer) else "false"
    return f"Passage: {_text(row['passage'])}\nQuestion: {question}?\nAnswer:", f" {label}", label


def piqa(row: Row) -> Converted | None:
    return _mc(row["goal"], [row["sol1"], row["sol2"]], _int_or_none(row.get("label")))


def siqa(row: Row) -> Converted | None:
    label = _int_or_none(row.get("label"))  # "1".."3"
    question = f"{_text(row['context'])} {_text(row['question'])}"
    return _mc(
        question, [row["answerA"], row["answerB"], row["answerC"]], None if label is None else label - 1
    )


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag(row: Row) -> Converted | None:
    context = _hellaswag_clean(f"{row.get('ctx_a', '')} {str(row.get('ctx_b', '')).capitalize()}")
    if not context.strip():
        context = _hellaswag_clean(str(row.get("ctx", "")))
    question = f"{_text(row.get('activity_label', ''))}: {context} ... Which ending is the most likely?"
    endings = [_hellaswag_clean(str(e)) for e in row["endings"]]
    return _mc(question, endings, _int_or_none(row.get("label")))


def winogrande(row: Row) -> Converted | None:
    answer = _int_or_none(row.get("answer"))  # "1" / "2"
    question = f"{_text(row['sentence'])} Which option fits the blank (_)?"
    return _mc(question, [row["option1"], row["option2"]], None if answer is None else answer - 1)


def _choices_row(question: str, choices: Any, answer_key: Any) -> Converted | None:
    """ARC / OpenBookQA: choices = {"text": [...], "label": ["A", ...] or ["1", ...]}."""
    texts, labels = list(choices["text"]), [str(label) for label in choices["label"]]
    key = str(answer_key).strip()
    index = labels.index(key) if key in labels else None
    return _mc(question, texts, index)


def arc(row: Row) -> Converted | None:
    return _choices_row(row["question"], row["choices"], row.get("answerKey"))


def openbookqa(row: Row) -> Converted | None:
    return _choices_row(row["question_stem"], row["choices"], row.get("answerKey"))


# ----------------------------------------------------------------------------- math

_CALCULATOR = re.compile(r"<<[^>]*>>")


def gsm8k(row: Row) -> Converted | None:
    solution, _, final = str(row["answer"]).rpartition("####")
    steps = " ".join(_CALCULATOR.sub("", solution).split())
    return _math(row["question"], final, steps)


def svamp(row: Row) -> Converted | None:
    question = row.get("question_concat") or f"{_text(row.get('Body', ''))} {_text(row.get('Question', ''))}"
    return _math(question, row["Answer"])


def multiarith(row: Row) -> Converted | None:
    return _math(row["question"], row["final_ans"])


def lila(row: Row) -> Converted | None:
    """AddSub and SingleEq from allenai/lila: input / output_answer."""
    return _math(row["input"], row["output_answer"])


def aqua(row: Row) -> Converted | None:
    options = [re.sub(r"^\s*[A-Ea-e]\s*\)\s*", "", str(option)) for option in row["options"]]
    letter = str(row.get("correct", "")).strip().upper()
    if letter not in LETTERS[: len(options)]:
        return None
    rationale = " ".join(str(row.get("rationale", "")).split())
    prompt = mc_prompt(_text(row["question"]), [_text(o) for o in options])
    target = (f" {rationale}" if rationale else "") + f" The answer is {letter}."
    return prompt, target, letter


# ----------------------------------------------------------------------------- summaries


def cnn_dailymail(row: Row) -> Converted | None:
    # highlights are one sentence per line with detached full stops ("... work .")
    highlights = re.sub(r"\s+([.,!?;:])", r"\1", _text(row["highlights"]))
    return _summary("Article", row["article"], highlights)


def xsum(row: Row) -> Converted | None:
    return _summary("Article", row["document"], row["summary"])


def dialogue(row: Row) -> Converted | None:
    """SAMSum and DialogSum: dialogue / summary."""
    return _summary("Dialogue", row["dialogue"], row["summary"], keep_lines=True)


# ----------------------------------------------------------------------------- LLM-Adapters

_ADAPTERS_OPTION = re.compile(r"^(?:answer|option|ending|solution)\s*([1-5])$", re.IGNORECASE)


def llm_adapters(answer_type: str) -> Converter:
    """A converter for LLM-Adapters rows ({"instruction", "input", "output", "answer"}).

    The prompt is the instruction (and input) followed by "Answer:"; the target is the
    row's own output (its chain of thought for math, "the correct answer is answer2" for
    commonsense). Gold answers are mapped to this project's: "answer2" -> "B", numbers normalised.
    """

    def convert(row: Row) -> Converted | None:
        instruction = str(row.get("instruction", "")).strip()
        extra = str(row.get("input", "") or "").strip()
        prompt = instruction + (f"\n{extra}" if extra else "") + "\nAnswer:"
        output = " ".join(str(row.get("output", "")).split())
        gold = str(row.get("answer", "")).strip()
        if answer_type == "choice":
            option = _ADAPTERS_OPTION.match(gold)
            gold = LETTERS[int(option.group(1)) - 1] if option else gold.upper().strip("() .")
            if gold not in LETTERS:
                return None
        elif answer_type == "boolean":
            gold = gold.lower()
            if gold not in ("true", "false"):
                return None
        elif answer_type == "number":
            gold = normalize_number(gold)
            if not gold:
                return None
        if not output:
            output = f"The answer is {gold}." if answer_type == "number" else gold
        return prompt, f" {output}", gold

    return convert
