"""The one exception users see: a ValueError whose message names the culprit and the fix."""

from __future__ import annotations


class ZFLoRAError(ValueError):
    """A problem the user caused (bad argument, wrong file, mismatched adapter).

    The message says what is wrong and what to do instead; the CLI prints it as one
    line and exits non-zero, without a traceback.
    """


def first_line(error: BaseException) -> str:
    """The first line of a library's exception (at most 160 characters), for a one-line ZFLoRAError."""
    text = str(error).strip().splitlines()
    return text[0][:160] if text else type(error).__name__
