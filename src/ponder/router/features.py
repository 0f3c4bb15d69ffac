"""Task features of a request, computed in microseconds without a model call.

Everything here is a pure function of the text and the request's declared fields,
except novelty, which compares against a bounded window of recently seen requests
(:class:`NoveltyTracker`); given the same history it is deterministic too.
"""

from __future__ import annotations

import re
import zlib
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = [
    "ERROR_COST_DOMAINS",
    "Features",
    "NoveltyTracker",
    "extract",
    "ngram_hashes",
]

Verifiability = Literal["code", "math", "json", "text"]
LatencyClass = Literal["interactive", "async"]
ErrorCost = Literal["low", "normal", "high"]

# Policy keywords: requests about these domains cost more when wrong.
ERROR_COST_DOMAINS: dict[str, tuple[str, ...]] = {
    "medical": (
        "diagnos", "symptom", "dosage", "dose ", "medication", "patient", "prescri",
        "treatment", "disease", "clinical", "mg ",
    ),
    "legal": (
        "contract", "lawsuit", "liabil", "court", "statute", "legal", "attorney",
        "plaintiff", "defendant", "gdpr", "compliance",
    ),
    "financial": (
        "invest", "tax ", "taxes", "loan", "mortgage", "portfolio", "interest rate",
        "securities", "audit", "accounting", "financial",
    ),
}  # fmt: skip

_CODE_HINTS = re.compile(
    r"```|\bdef |\bclass |\bfunction\b|\bimport |\breturn\b|=>|\bpython\b|\bjavascript\b|"
    r"\btypescript\b|\bsql\b|\bselect\b.+\bfrom\b|\bregex\b|\bimplement\b|\brefactor\b|\bbug\b|"
    r"\bcompile|\bunit tests?\b|\bapi\b|[{};]\s*$",
    re.IGNORECASE | re.MULTILINE,
)
# Unambiguous code: a fence, a definition or import at a line start, a statement end.
_STRONG_CODE = re.compile(
    r"```|^\s*(?:def|class|import|from\s+\w+\s+import|function|const|let|var|public|fn)\b|"
    r"[;{}]\s*$|=>",
    re.MULTILINE,
)
_MATH_WORDS = re.compile(
    r"\b(calculate|compute|solve|how many|how much|sum|total|product|equation|integral|"
    r"derivative|probability|percent|average|remainder|divisible|prove|simplify|evaluate)\b",
    re.IGNORECASE,
)
_ARITH = re.compile(r"\d\s*[-+*/^×÷=]\s*\(?\s*\d")
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:[.,]\d+)?")
_JSON_HINTS = re.compile(
    r"\bjson\b|\bschema\b|\byaml\b|\bcsv\b|^\s*[\[{]", re.IGNORECASE | re.MULTILINE
)
_STEP_WORDS = re.compile(
    r"\b(then|after|before|next|finally|first|second|third|each|every|step|steps|"
    r"if|unless|otherwise|remaining|left|more than|less than|times|per|twice|half)\b",
    re.IGNORECASE,
)
_SENTENCE = re.compile(r"[.!?](?:\s|$)")
_LIST_ITEM = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+", re.MULTILINE)
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)

_STOPWORDS: dict[str, frozenset[str]] = {
    "en": frozenset(
        [
            "the",
            "and",
            "is",
            "of",
            "to",
            "in",
            "that",
            "it",
            "for",
            "what",
            "with",
            "how",
            "are",
            "this",
            "you",
        ]
    ),
    "de": frozenset(
        [
            "der",
            "die",
            "und",
            "ist",
            "das",
            "nicht",
            "ein",
            "eine",
            "ich",
            "zu",
            "mit",
            "wie",
            "was",
        ]
    ),
    "fr": frozenset(
        [
            "le",
            "la",
            "les",
            "et",
            "est",
            "des",
            "une",
            "un",
            "pour",
            "que",
            "qui",
            "dans",
            "avec",
            "pas",
        ]
    ),
    "es": frozenset(
        [
            "el",
            "la",
            "los",
            "las",
            "y",
            "es",
            "de",
            "que",
            "una",
            "un",
            "por",
            "para",
            "con",
            "como",
        ]
    ),
}
_SCRIPTS = (
    ("zh", re.compile(r"[\u4e00-\u9fff]")),
    ("ja", re.compile(r"[\u3040-\u30ff]")),
    ("ko", re.compile(r"[\uac00-\ud7af]")),
    ("ru", re.compile(r"[\u0400-\u04ff]")),
    ("ar", re.compile(r"[\u0600-\u06ff]")),
)


@dataclass(frozen=True)
class Features:
    """What the router knows about a request before any model call."""

    verifiability: Verifiability
    steps: int
    error_cost: ErrorCost
    error_domains: tuple[str, ...]
    latency: LatencyClass
    novelty: float
    chars: int
    words: int
    est_tokens: int
    numbers: int
    language: str
    code_score: float
    math_score: float

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["error_domains"] = list(self.error_domains)
        return out

    def numeric(self) -> list[float]:
        """A fixed-order numeric vector for learned classifiers."""
        return [
            float(self.verifiability == "code"),
            float(self.verifiability == "math"),
            float(self.verifiability == "json"),
            float(self.verifiability == "text"),
            min(self.steps, 30) / 30.0,
            {"low": 0.0, "normal": 0.5, "high": 1.0}[self.error_cost],
            float(self.latency == "interactive"),
            self.novelty,
            min(self.est_tokens, 2000) / 2000.0,
            min(self.numbers, 20) / 20.0,
            self.code_score,
            self.math_score,
        ]


NUMERIC_NAMES = (
    "is_code", "is_math", "is_json", "is_text", "steps", "error_cost", "interactive",
    "novelty", "length", "numbers", "code_score", "math_score",
)  # fmt: skip


def ngram_hashes(text: str, n: int = 3, buckets: int = 1 << 16) -> frozenset[int]:
    """Hashed character n-grams of the lower-cased, space-normalized text (crc32: stable)."""
    norm = " ".join(text.lower().split())
    if len(norm) < n:
        return frozenset({zlib.crc32(norm.encode()) % buckets}) if norm else frozenset()
    return frozenset(
        zlib.crc32(norm[i : i + n].encode()) % buckets for i in range(len(norm) - n + 1)
    )


@dataclass
class NoveltyTracker:
    """Novelty = 1 - the highest Jaccard similarity to the last ``window`` requests."""

    window: int = 256
    _recent: deque[frozenset[int]] = field(default_factory=deque)

    def score(self, text: str, remember: bool = True) -> float:
        grams = ngram_hashes(text)
        best = 0.0
        for seen in self._recent:
            union = len(grams | seen)
            if union:
                best = max(best, len(grams & seen) / union)
        if remember:
            self._recent.append(grams)
            while len(self._recent) > self.window:
                self._recent.popleft()
        return round(1.0 - best, 4)


def _language(text: str, words: list[str]) -> str:
    for code, pattern in _SCRIPTS:
        if pattern.search(text):
            return code
    lowered = [w.lower() for w in words[:200]]
    if not lowered:
        return "unknown"
    hits = {lang: sum(w in stop for w in lowered) for lang, stop in _STOPWORDS.items()}
    lang, count = max(hits.items(), key=lambda kv: kv[1])
    return lang if count else "unknown"


def _clip(x: float) -> float:
    return max(0.0, min(1.0, x))


def extract(
    text: str,
    *,
    error_cost: ErrorCost | None = None,
    latency: LatencyClass | None = None,
    stream: bool = False,
    task: str | None = None,
    novelty: NoveltyTracker | None = None,
    extra_domains: Iterable[tuple[str, Iterable[str]]] = (),
) -> Features:
    """Features of ``text`` (the request's last user message, usually).

    ``error_cost`` and ``latency`` as declared by the caller win over inference;
    ``task`` (``code``/``math``/``json``/``text``) as declared wins over the text;
    a streamed request is interactive unless declared otherwise.
    """
    words = _WORD.findall(text)
    lowered = text.lower()
    numbers = len(_NUMBER.findall(text))
    code_hits = len(_CODE_HINTS.findall(text)) + 2 * len(_STRONG_CODE.findall(text))
    math_hits = len(_MATH_WORDS.findall(text)) + 2 * len(_ARITH.findall(text))
    code_score = _clip(code_hits / 4)
    math_score = _clip((math_hits + min(numbers, 6) / 3) / 5)
    if task in ("code", "math", "json", "text"):
        verif: Verifiability = task  # type: ignore[assignment]
    elif code_score >= 0.5 and code_score >= math_score:
        verif = "code"
    elif _JSON_HINTS.search(text):
        verif = "json"
    elif math_score >= 0.4:
        verif = "math"
    else:
        verif = "text"

    domains = [
        name
        for name, keys in (*ERROR_COST_DOMAINS.items(), *extra_domains)
        if any(k in lowered for k in keys)
    ]
    cost: ErrorCost = error_cost or ("high" if domains else "normal")

    sentences = max(1, len(_SENTENCE.findall(text)))
    steps = (
        len(_STEP_WORDS.findall(text))
        + max(0, numbers - 1)
        + len(_ARITH.findall(text))
        + len(_LIST_ITEM.findall(text))
        + (sentences - 1)
    )
    if verif == "code":
        steps += text.count("\n") // 4
    return Features(
        verifiability=verif,
        steps=steps,
        error_cost=cost,
        error_domains=tuple(domains),
        latency=latency or ("interactive" if stream else "async"),
        novelty=novelty.score(text) if novelty is not None else 1.0,
        chars=len(text),
        words=len(words),
        est_tokens=max(1, len(text) // 4),
        numbers=numbers,
        language=_language(text, words),
        code_score=round(code_score, 4),
        math_score=round(math_score, 4),
    )
