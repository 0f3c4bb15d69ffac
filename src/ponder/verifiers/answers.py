"""Final-answer extraction and normalization, used for voting and grading."""

from __future__ import annotations

import re

__all__ = ["extract_answer", "extract_code", "normalize_answer"]

_BOXED = re.compile(r"\\boxed\{")
_ANSWER_WORD = re.compile(r"\b(?:final\s+answer|answer)\b", re.IGNORECASE)
# What joins "answer" to the answer: "is", ":" or "=", with optional bold around.
# Anchored with .match and optional after the separator, so it never backtracks far
# (the old one-regex form took O(n^4) on "Answer" followed by many blank lines).
_ANSWER_JOIN = re.compile(r"\**\s*(?:is\b\s*[:=]?|[:=])\s*\**\s*", re.IGNORECASE)
_HASHES = re.compile(r"####\s*(.+)")
# Digits glued to letters ("CO2", "w3", "x2") are names, not numbers.
_NUMBER = re.compile(r"(?<![A-Za-z_\d.])-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:/\d+)?")
_FRAC = re.compile(r"\\[dt]?frac\{\s*(-?[\d.]+)\s*\}\{\s*(-?[\d.]+)\s*\}")
_CODE_BLOCK = re.compile(r"```[ \t]*+([\w+-]*+)[^\n]*+\n(.*?)(?:```|\Z)", re.DOTALL)
_LANGUAGE_ALIASES = {"python": {"python", "py", "python3"}}


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
    a = _FRAC.sub(r"\1/\2", a)
    numbers: list[str] = _NUMBER.findall(a)
    if len(numbers) == 1 and len(a) <= len(numbers[0]) + 12:
        n = numbers[0].replace(",", "")
        if "." in n and "/" not in n:
            n = n.rstrip("0").rstrip(".")
            if n.startswith(("-.", ".")):
                n = n.replace(".", "0.", 1)
        return n
    return " ".join(a.lower().split())


def _stated_answer(text: str) -> str | None:
    """The answer after the last "answer is / answer:" that is followed by one."""
    for m in reversed(list(_ANSWER_WORD.finditer(text))):
        join = _ANSWER_JOIN.match(text, m.end())
        if join is None:
            continue  # "this answer helps" states nothing
        end = text.find("\n", join.end())
        line = text[join.end() : end if end >= 0 else len(text)]
        answer = normalize_answer(line)
        if answer:
            return answer
    return None


def extract_answer(text: str) -> str | None:
    """The final answer of a solution: boxed, then "Answer:", then "####", then last number."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return normalize_answer(boxed)
    stated = _stated_answer(text)
    if stated is not None:
        return stated
    hashes: list[str] = _HASHES.findall(text)
    if hashes:
        return normalize_answer(hashes[-1])
    numbers: list[str] = _NUMBER.findall(text)
    if numbers:
        return normalize_answer(numbers[-1])
    stripped = text.strip()
    return normalize_answer(stripped) if stripped else None


def extract_code(text: str, language: str | None = "python") -> str:
    """The last fenced code block in ``language``, else the last untagged one, else the last.

    Without any fenced block the text itself is returned.
    """
    blocks: list[tuple[str, str]] = _CODE_BLOCK.findall(text)
    if not blocks:
        return text
    if language:
        names = _LANGUAGE_ALIASES.get(language.lower(), {language.lower()})
        for wanted in (lambda lang: lang in names, lambda lang: lang == ""):
            bodies = [body for lang, body in blocks if wanted(lang.lower())]
            if bodies:
                return bodies[-1]
    return blocks[-1][1]
