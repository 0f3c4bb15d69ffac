"""Structured outputs on the embedded engine: which grammar library, and what constraints cost.

Two parts, one run, JSON lines on stdout:

``mask`` -- the per-token cost of each grammar library on the real 151,936-token
Qwen2.5 vocabulary: compile a JSON schema, then walk the tokens of a valid
instance computing the next-token mask, applying it to a logits vector and
advancing. Candidates: llguidance, outlines-core, llama.cpp's own grammar
sampler (GBNF from the same schema). xgrammar is skipped when it cannot be
imported (its wheels require torch).

``tasks`` -- 32 tasks (16 JSON-schema extractions, 16 tool calls) on the 0.5B
model, each run unconstrained (schema in the prompt) and constrained
(llguidance mask): schema-valid outputs, task accuracy, and decode time per
generated token, with ratios constrained / unconstrained.

    python benchmarks/structured.py [--part mask|tasks|all] [--limit N]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import statistics
import time
from typing import Any

import numpy as np

from ponder.structured import GrammarCompiler, validation_errors
from ponder.tools import call_errors, tool_call_constraint, tools_from_openai
from ponder.types import GenRequest, Message, OutputConstraint

MODEL = "qwen2.5-coder-0.5b-instruct"

# --------------------------------------------------------------------------- mask part

MASK_SCHEMAS: dict[str, tuple[dict[str, Any], Any]] = {
    "person": (
        {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer"},
                "email": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["name", "age", "email", "tags"],
            "additionalProperties": False,
        },
        {"name": "Ada Lovelace", "age": 36, "email": "ada@example.org", "tags": ["math", "poet"]},
    ),
    "order": (
        {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "sku": {"type": "string"},
                            "qty": {"type": "integer"},
                            "price": {"type": "number"},
                        },
                        "required": ["sku", "qty", "price"],
                        "additionalProperties": False,
                    },
                },
                "status": {"enum": ["open", "paid", "shipped"]},
            },
            "required": ["id", "items", "status"],
            "additionalProperties": False,
        },
        {
            "id": "A-1042",
            "items": [
                {"sku": "pen", "qty": 3, "price": 1.5},
                {"sku": "ink", "qty": 1, "price": 7.25},
            ],
            "status": "paid",
        },
    ),
}


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


class _Vocab:
    """The real model's vocabulary through llama.cpp (no context needed)."""

    def __init__(self) -> None:
        import llama_cpp
        from llama_cpp import _internals
        from llama_cpp._logger import set_verbose

        from ponder.backends.catalog import resolve_model
        from ponder.config import default_cache_dir

        set_verbose(False)
        self.ll = llama_cpp
        path = resolve_model(MODEL, default_cache_dir())
        self.model = _internals.LlamaModel(
            path_model=str(path), params=llama_cpp.llama_model_default_params(), verbose=False
        )
        self.vocab = self.model.vocab
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.eos = llama_cpp.llama_vocab_eos(self.vocab)

    def tokenize(self, data: bytes) -> list[int]:
        return list(self.model.tokenize(data, False, False))

    def pieces(self) -> list[bytes]:
        buf = ctypes.create_string_buffer(256)
        out = []
        for t in range(self.n_vocab):
            n = self.ll.llama_token_to_piece(self.vocab, t, buf, 256, 0, True)
            out.append(buf.raw[: max(n, 0)])
        return out


def _walk(tokens: list[int], step: Any) -> float:
    """Seconds per token of ``step(token)`` over a valid token sequence."""
    start = time.perf_counter()
    for t in tokens:
        step(t)
    return (time.perf_counter() - start) / len(tokens)


def mask_llguidance(
    v: _Vocab, schema: dict[str, Any], tokens: list[int], logits: np.ndarray
) -> dict[str, Any]:
    t0 = time.perf_counter()
    compiler = GrammarCompiler.for_llama_vocab(v.vocab, v.tokenize)
    tokenizer_s = time.perf_counter() - t0
    constraint = OutputConstraint(kind="json_schema", json_schema=schema)
    t0 = time.perf_counter()
    matcher = compiler.matcher(constraint)
    compile_s = time.perf_counter() - t0

    def step(t: int) -> None:
        masked = matcher.apply(logits)
        assert masked[t] > -np.inf
        matcher.advance(t)

    return {"tokenizer_s": tokenizer_s, "compile_s": compile_s, "per_token_s": _walk(tokens, step)}


def mask_outlines(
    v: _Vocab, schema: dict[str, Any], tokens: list[int], logits: np.ndarray
) -> dict[str, Any]:
    import outlines_core
    from outlines_core.json_schema import build_regex_from_schema

    t0 = time.perf_counter()
    pieces = v.pieces()
    by_piece: dict[bytes, list[int]] = {}
    for i, p in enumerate(pieces):
        if i != v.eos and p and not v.ll.llama_vocab_is_control(v.vocab, i):
            by_piece.setdefault(p, []).append(i)
    vocabulary = outlines_core.Vocabulary(v.eos, by_piece)
    tokenizer_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    # Same separators as the other two (outlines' default whitespace is open-ended).
    regex = build_regex_from_schema(json.dumps(schema), r"[ ]?")
    index = outlines_core.Index(regex, vocabulary)
    compile_s = time.perf_counter() - t0
    guide = outlines_core.Guide(index)
    bits = np.zeros((v.n_vocab + 31) // 32, dtype=np.int32)

    def step(t: int) -> None:
        guide.write_mask_into(bits.ctypes.data, bits.size, 4)
        allowed = np.unpackbits(bits.view(np.uint8), bitorder="little", count=v.n_vocab).view(bool)
        masked = np.where(allowed, logits, np.float32(-np.inf))
        assert masked[t] > -np.inf
        guide.advance(t)

    return {"tokenizer_s": tokenizer_s, "compile_s": compile_s, "per_token_s": _walk(tokens, step)}


def mask_llama_grammar(
    v: _Vocab, schema: dict[str, Any], tokens: list[int], logits: np.ndarray
) -> dict[str, Any]:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    ll = v.ll
    t0 = time.perf_counter()
    gbnf = json_schema_to_gbnf(json.dumps(schema))
    sampler = ll.llama_sampler_init_grammar(v.vocab, gbnf.encode(), b"root")
    compile_s = time.perf_counter() - t0
    data = (ll.llama_token_data * v.n_vocab)()
    ids = np.arange(v.n_vocab, dtype=np.int32)

    def step(t: int) -> None:
        # The sampler rewrites the candidates in place: refill them every step, as an
        # engine sampling over its own logits must.
        view = np.ctypeslib.as_array(data).view(
            np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
        )
        view["id"] = ids
        view["logit"] = logits
        array = ll.llama_token_data_array(data=data, size=v.n_vocab, selected=-1, sorted=False)
        ll.llama_sampler_apply(sampler, ctypes.byref(array))
        assert view["logit"][t] > -np.inf
        ll.llama_sampler_accept(sampler, t)

    try:
        return {"tokenizer_s": 0.0, "compile_s": compile_s, "per_token_s": _walk(tokens, step)}
    finally:
        ll.llama_sampler_free(sampler)


def run_mask_part() -> None:
    v = _Vocab()
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(v.n_vocab).astype(np.float32)
    libraries = {
        "llguidance": mask_llguidance,
        "outlines-core": mask_outlines,
        "llama.cpp-grammar": mask_llama_grammar,
    }
    try:
        import xgrammar  # noqa: F401
    except ImportError as e:
        _emit({"bench": "mask", "library": "xgrammar", "skipped": f"cannot import: {e}"})
    for name, (schema, instance) in MASK_SCHEMAS.items():
        tokens = v.tokenize(json.dumps(instance).encode())
        results: dict[str, dict[str, Any]] = {}
        for lib, fn in libraries.items():
            try:
                results[lib] = fn(v, schema, tokens, logits)
            except Exception as e:  # a library that cannot run this schema is reported, not fatal
                _emit({"bench": "mask", "library": lib, "schema": name, "error": repr(e)[:300]})
        base = results.get("llguidance", {}).get("per_token_s")
        for lib, r in results.items():
            _emit(
                {
                    "bench": "mask",
                    "library": lib,
                    "schema": name,
                    "tokens": len(tokens),
                    "vocab": v.n_vocab,
                    "tokenizer_s": round(r["tokenizer_s"], 3),
                    "compile_s": round(r["compile_s"], 4),
                    "per_token_us": round(r["per_token_s"] * 1e6, 1),
                    "per_token_vs_llguidance": round(r["per_token_s"] / base, 2) if base else None,
                }
            )


# --------------------------------------------------------------------------- tasks part

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "city": {"type": "string"},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
PEOPLE = [
    (
        "Maria Lopez is 34 and lives in Madrid.",
        {"name": "Maria Lopez", "age": 34, "city": "Madrid"},
    ),
    (
        "Tom Becker, aged 52, moved to Berlin last year.",
        {"name": "Tom Becker", "age": 52, "city": "Berlin"},
    ),
    (
        "In Tokyo lives Yuki Sato, who just turned 27.",
        {"name": "Yuki Sato", "age": 27, "city": "Tokyo"},
    ),
    ("Ahmed Khan (41) runs a bakery in Cairo.", {"name": "Ahmed Khan", "age": 41, "city": "Cairo"}),
    ("Lena Novak, 19, studies in Prague.", {"name": "Lena Novak", "age": 19, "city": "Prague"}),
    (
        "The mayor of Oslo, Erik Berg, is 60 years old.",
        {"name": "Erik Berg", "age": 60, "city": "Oslo"},
    ),
    (
        "Priya Nair is a 30-year-old engineer in Mumbai.",
        {"name": "Priya Nair", "age": 30, "city": "Mumbai"},
    ),
    ("Lucas Silva, 45, teaches in Lisbon.", {"name": "Lucas Silva", "age": 45, "city": "Lisbon"}),
]
EVENT = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "day": {
            "enum": ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
        },
        "attendees": {"type": "integer", "minimum": 0},
        "online": {"type": "boolean"},
    },
    "required": ["title", "day", "attendees", "online"],
    "additionalProperties": False,
}
EVENTS = [
    (
        "Team standup on Monday, 8 people, on Zoom.",
        {"day": "monday", "attendees": 8, "online": True},
    ),
    (
        "Board meeting Thursday in room 4 with 12 attendees.",
        {"day": "thursday", "attendees": 12, "online": False},
    ),
    (
        "Friday webinar for 150 participants, streamed online.",
        {"day": "friday", "attendees": 150, "online": True},
    ),
    (
        "A picnic on Sunday in the park for 20 friends.",
        {"day": "sunday", "attendees": 20, "online": False},
    ),
    (
        "Wednesday code review call with 5 developers over video.",
        {"day": "wednesday", "attendees": 5, "online": True},
    ),
    (
        "Tuesday lunch at the office canteen, 6 people.",
        {"day": "tuesday", "attendees": 6, "online": False},
    ),
    (
        "Saturday chess club in the library, 14 players.",
        {"day": "saturday", "attendees": 14, "online": False},
    ),
    (
        "Monday all-hands livestream for 300 staff.",
        {"day": "monday", "attendees": 300, "online": True},
    ),
]
TOOLS = tools_from_openai(
    [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string"},
                        "unit": {"enum": ["celsius", "fahrenheit"]},
                    },
                    "required": ["city", "unit"],
                    "additionalProperties": False,
                },
            },
        },
        {
            "type": "function",
            "function": {
                "name": "convert_currency",
                "description": "Convert an amount of money between currencies",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "amount": {"type": "number"},
                        "source": {"type": "string", "description": "ISO code, e.g. USD"},
                        "target": {"type": "string", "description": "ISO code, e.g. EUR"},
                    },
                    "required": ["amount", "source", "target"],
                    "additionalProperties": False,
                },
            },
        },
        {
            "type": "function",
            "function": {
                "name": "set_timer",
                "description": "Start a countdown timer",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "minutes": {"type": "integer", "minimum": 1},
                        "label": {"type": "string"},
                    },
                    "required": ["minutes", "label"],
                    "additionalProperties": False,
                },
            },
        },
    ]
)
TOOL_TASKS = [
    (
        "What's the weather in Paris in celsius?",
        "get_weather",
        {"city": "Paris", "unit": "celsius"},
    ),
    (
        "Is it hot in Phoenix right now? Use fahrenheit.",
        "get_weather",
        {"city": "Phoenix", "unit": "fahrenheit"},
    ),
    ("Weather for Dublin please, celsius.", "get_weather", {"city": "Dublin"}),
    ("How cold is it in Chicago (fahrenheit)?", "get_weather", {"city": "Chicago"}),
    ("Tell me the current weather in Nairobi in celsius.", "get_weather", {"city": "Nairobi"}),
    (
        "Convert 100 USD to EUR.",
        "convert_currency",
        {"amount": 100, "source": "USD", "target": "EUR"},
    ),
    (
        "How many yen is 250 US dollars? (USD to JPY)",
        "convert_currency",
        {"amount": 250, "source": "USD", "target": "JPY"},
    ),
    (
        "Change 40 GBP into CHF.",
        "convert_currency",
        {"amount": 40, "source": "GBP", "target": "CHF"},
    ),
    (
        "I have 1200 EUR, what is that in USD?",
        "convert_currency",
        {"amount": 1200, "source": "EUR", "target": "USD"},
    ),
    (
        "Convert 75.5 CAD to AUD.",
        "convert_currency",
        {"amount": 75.5, "source": "CAD", "target": "AUD"},
    ),
    ("Set a 10 minute timer for the pasta.", "set_timer", {"minutes": 10}),
    ("Start a timer: 25 minutes, label it focus.", "set_timer", {"minutes": 25}),
    ("Remind me in 5 minutes to check the oven (timer).", "set_timer", {"minutes": 5}),
    ("Timer for 45 minutes called workout.", "set_timer", {"minutes": 45}),
    ("Please set a 3 minute timer for tea.", "set_timer", {"minutes": 3}),
    ("Count down 15 minutes for the meeting.", "set_timer", {"minutes": 15}),
]


def _json_tasks() -> list[dict[str, Any]]:
    tasks = []
    for text, want in PEOPLE:
        tasks.append({"kind": "json", "schema": PERSON, "text": text, "want": want})
    for text, want in EVENTS:
        tasks.append({"kind": "json", "schema": EVENT, "text": text, "want": want})
    return tasks


def _json_request(task: dict[str, Any], constrained: bool) -> GenRequest:
    prompt = (
        f"Extract the data from this text as JSON matching this JSON Schema:\n"
        f"{json.dumps(task['schema'])}\n\nText: {task['text']}\nReply with the JSON object only."
    )
    return GenRequest(
        messages=[Message(role="user", content=prompt)],
        max_tokens=96,
        constraint=OutputConstraint(kind="json_schema", json_schema=task["schema"])
        if constrained
        else None,
    )


def _tool_request(task: tuple[str, str, dict[str, Any]], constrained: bool) -> GenRequest:
    return GenRequest(
        messages=[Message(role="user", content=task[0])],
        max_tokens=96,
        tools=TOOLS,
        tool_choice="required",
        constraint=tool_call_constraint(TOOLS, "required", parallel=False) if constrained else None,
    )


def _matches(got: dict[str, Any], want: dict[str, Any]) -> bool:
    def norm(x: Any) -> Any:
        return x.strip().lower() if isinstance(x, str) else x

    return all(norm(got.get(k)) == norm(v) for k, v in want.items())


async def _timed(engine: Any, req: GenRequest) -> tuple[str, int, float]:
    """(text, generated tokens, seconds between first and last streamed token, generation)."""
    first = last = None
    text = ""
    tokens = 0
    async for delta in engine.stream(req):
        now = time.perf_counter()
        if delta.text and first is None:
            first = now
        last = now
        text += delta.text
        if delta.usage is not None:
            tokens = delta.usage.output
    decode_s = (last - first) if first is not None and last is not None else 0.0
    return text, tokens, decode_s


async def run_task_part(limit: int | None) -> None:
    from ponder.backends.llama_cpp import LlamaCppBackend
    from ponder.tools import parse_tool_calls

    engine = LlamaCppBackend(MODEL, n_ctx=4096, max_sequences=2)
    # Build the grammar tokenizer once, outside the timings.
    engine._grammar_compiler()
    jobs: list[tuple[str, Any]] = [("json", t) for t in _json_tasks()] + [
        ("tool", t) for t in TOOL_TASKS
    ]
    if limit:
        jobs = jobs[:limit]
    totals: dict[bool, dict[str, float]] = {
        c: {"valid": 0, "correct": 0, "tokens": 0, "decode_s": 0.0, "n": 0} for c in (False, True)
    }
    per_token: dict[bool, list[float]] = {False: [], True: []}
    for kind, task in jobs:
        for constrained in (False, True):
            req = (
                _json_request(task, constrained)
                if kind == "json"
                else _tool_request(task, constrained)
            )
            text, tokens, decode_s = await _timed(engine, req)
            if kind == "json":
                c = OutputConstraint(kind="json_schema", json_schema=task["schema"])
                valid = not validation_errors(text, c)
                correct = valid and _matches(json.loads(text), task["want"])
            else:
                parsed = parse_tool_calls(text, TOOLS)
                calls = parsed.calls
                valid = len(calls) >= 1 and not call_errors(calls, TOOLS) and not parsed.errors
                correct = (
                    valid
                    and calls[0].name == task[1]
                    and _matches(json.loads(calls[0].arguments), task[2])
                )
            t = totals[constrained]
            t["n"] += 1
            t["valid"] += valid
            t["correct"] += correct
            t["tokens"] += tokens
            t["decode_s"] += decode_s
            if tokens > 1 and decode_s > 0:
                per_token[constrained].append(decode_s / (tokens - 1))
            _emit(
                {
                    "bench": "task",
                    "kind": kind,
                    "constrained": constrained,
                    "valid": bool(valid),
                    "correct": bool(correct),
                    "tokens": tokens,
                    "text": text[:160],
                }
            )
    engine.close()
    summary: dict[str, Any] = {"bench": "tasks_summary", "tasks": len(jobs)}
    for constrained, t in totals.items():
        label = "constrained" if constrained else "unconstrained"
        summary[label] = {
            "schema_valid": round(t["valid"] / t["n"], 3),
            "task_accuracy": round(t["correct"] / t["n"], 3),
            "tokens": int(t["tokens"]),
            "median_decode_ms_per_token": round(statistics.median(per_token[constrained]) * 1e3, 2),
        }
    summary["decode_cost_ratio_constrained_over_unconstrained"] = round(
        summary["constrained"]["median_decode_ms_per_token"]
        / summary["unconstrained"]["median_decode_ms_per_token"],
        3,
    )
    _emit(summary)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=["mask", "tasks", "all"], default="all")
    parser.add_argument("--limit", type=int, default=None, help="run only the first N tasks")
    args = parser.parse_args()
    if args.part in ("mask", "all"):
        run_mask_part()
    if args.part in ("tasks", "all"):
        asyncio.run(run_task_part(args.limit))


if __name__ == "__main__":
    main()
