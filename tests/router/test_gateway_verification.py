"""Verifiers through the gateway: response_format check and retry, ponder.verifier, verdicts."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from ponder.backends.fake import FunctionBackend, Reply
from ponder.config import RouterSettings, ServerSettings
from ponder.router.policy import Router
from ponder.server.app import create_app
from ponder.server.gateway import Gateway
from ponder.strategies import available_strategies
from ponder.strategies.program import PYTHON_INSTRUCTION
from ponder.types import GenRequest

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
ASK = "Where is the Eiffel tower? Reply with a JSON object with the key city."
WORD = (
    "A baker makes 24 rolls each hour. After 5 hours she sells 70 rolls, then bakes 3 more "
    "batches of 12. How many rolls does she have left?"
)


def app_for(fn: Any, **router: Any) -> tuple[httpx.AsyncClient, FunctionBackend]:
    backend = FunctionBackend(fn)
    settings = RouterSettings.model_validate(router)
    gateway = Gateway(
        backend, ServerSettings(), router=Router(settings, strategies=available_strategies())
    )
    app = create_app(backend, gateway=gateway)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t"), backend


async def post(c: httpx.AsyncClient, text: str, **extra: Any) -> httpx.Response:
    body = {"model": "m", "messages": [{"role": "user", "content": text}], **extra}
    return await c.post("/v1/chat/completions", json=body)


def greedy_invalid(req: GenRequest, i: int) -> Reply:
    # The greedy answer is not JSON; sampled answers are.
    return Reply('{"city": "Paris"}') if req.n > 1 else Reply("It is in Paris.")


@pytest.mark.parametrize(
    "fmt",
    [
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "c", "schema": SCHEMA}},
    ],
)
async def test_response_format_is_validated_and_retried(fmt: dict) -> None:
    c, backend = app_for(greedy_invalid)
    async with c:
        r = await post(c, ASK, response_format=fmt)
    assert r.status_code == 200, r.text
    body = r.json()
    assert json.loads(body["choices"][0]["message"]["content"]) == {"city": "Paris"}
    assert body["ponder"]["strategy"] == "cascade"
    assert body["ponder"]["verification"] == {"verdict": "pass", "verifier": "json_schema"}
    assert [req.n for req in backend.calls] == [1, 2]  # the greedy answer, then the retry


async def test_valid_first_answer_costs_no_retry() -> None:
    c, backend = app_for(lambda req, i: Reply('{"city": "Paris"}'))
    async with c:
        r = await post(c, ASK, response_format={"type": "json_object"})
    assert r.status_code == 200 and len(backend.calls) == 1
    assert r.json()["ponder"]["verification"]["verdict"] == "pass"


async def test_still_invalid_after_the_retry_says_fail() -> None:
    c, _ = app_for(lambda req, i: Reply("no json here"))
    async with c:
        r = await post(c, ASK, response_format={"type": "json_object"})
    assert r.status_code == 200
    assert r.json()["ponder"]["verification"] == {"verdict": "fail", "verifier": "json_schema"}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        (
            {"ponder": {"verifier": {"type": "tests", "tests": ["assert ("]}}},
            "ponder.verifier.tests",
        ),
        ({"ponder": {"verifier": {"type": "magic"}}}, "ponder.verifier.type"),
    ],
)
async def test_bad_verifier_input_is_a_400_and_runs_nothing(extra: dict, param: str) -> None:
    c, backend = app_for(greedy_invalid)
    async with c:
        r = await post(c, ASK, **extra)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert backend.calls == []


async def test_request_tests_verifier_judges_a_named_strategy() -> None:
    good = "```python\ndef inc(x):\n    return x + 1\n```"
    bad = "```python\ndef inc(x):\n    return x\n```"
    c, _ = app_for(lambda req, i: Reply([bad, good, bad][i % 3]))
    async with c:
        r = await post(
            c, "Write inc(x) in Python.",
            ponder={"strategy": "best_of_n", "params": {"n": 3},
                    "verifier": {"type": "tests", "tests": ["assert inc(1) == 2"]}},
        )  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"]["content"] == good
    assert body["ponder"]["verification"] == {"verdict": "pass", "verifier": "tests"}


async def test_default_policy_word_problem_cross_checks_with_a_program() -> None:
    """No config: the shipped policy plans a math word problem; verdict by agreement."""

    def fn(req: GenRequest, i: int) -> Reply:
        if PYTHON_INSTRUCTION in (req.messages[-1].content or ""):
            return Reply("```python\nprint(24 * 5 - 70 + 3 * 12)\n```")
        return Reply("Answer: 86")

    c, _ = app_for(fn)
    async with c:
        r = await post(c, WORD)
    assert r.status_code == 200, r.text
    info = r.json()["ponder"]
    assert info["task_class"] == "math" and info["strategy"] != "direct"
    assert info["verification"]["verdict"] in ("pass", "unknown")
    assert "86" in r.json()["choices"][0]["message"]["content"]
