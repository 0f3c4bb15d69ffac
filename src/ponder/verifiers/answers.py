"""Final-answer extraction and normalization, used for voting and grading."""

from __future__ import annotations

import re

__all__ = ["extract_answer", "extract_code", "normalize_answer"]

_BOXED = re.compile(r"\\boxed\{")
_ANSWER_LINE = re.compile(
    r"(?:final answer|answer)\s*(?:is)?\s*[:=]?\s*\**\s*(.+)", re.IGNORECASE
)
_HASHES = re.compile(r"####\s*(.+)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_CODE_BLOCK = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def _last_boxed(text: str) -> str | None:
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    i = start = starts[-1]
    depth = 1
    while i < len(text):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
        i += 1
    return None


def normalize_answer(answer: str) -> str:
    """Canonical form for voting: numbers without commas/units, lower-cased text."""
    a = answer.strip().strip("*").strip().rstrip(".").strip()
    a = a.strip("$").strip()
    numbers = _NUMBER.findall(a)
    if len(numbers) == 1 and len(a) <= len(numbers[0]) + 12:
        n = numbers[0].replace(",", "")
        if "." in n and "/" not in n:
            n = n.rstrip("0").rstrip(".")
        return n
    return " ".join(a.lower().split())


def extract_answer(text: str) -> str | None:
    """The final answer of a solution: boxed, then "Answer:", then "####", then last number."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return normalize_answer(boxed)
    lines = [m.group(1) for m in _ANSWER_LINE.finditer(text)]
    if lines:
        return normalize_answer(lines[-1].splitlines()[0])
    hashes = _HASHES.findall(text)
    if hashes:
        return normalize_answer(hashes[-1])
    numbers = _NUMBER.findall(text)
    if numbers:
        return normalize_answer(numbers[-1])
    stripped = text.strip()
    return normalize_answer(stripped) if stripped else None


def extract_code(text: str, language: str | None = "python") -> str:
    """The last fenced code block (preferring ``language``), or the text itself."""
    blocks = _CODE_BLOCK.findall(text)
    if not blocks:
        return text
    if language:
        tagged = [body for lang, body in blocks if lang.lower() in (language, "py", "")]
        if tagged:
            return tagged[-1]
    return blocks[-1][1]
