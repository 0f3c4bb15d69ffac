"""The router inside the gateway, called in-process through httpx.ASGITransport."""

from __future__ import annotations

from typing import Any

import httpx

from ponder.backends.fake import FunctionBackend, Reply
from ponder.config import RouterSettings, ServerSettings
from ponder.router.policy import Router
from ponder.server.app import create_app
from ponder.server.gateway import Gateway
from ponder.strategies import available_strategies
from ponder.types import GenRequest

WORD_PROBLEM = (
    "A baker makes 24 rolls each hour. After 5 hours she sells 70 rolls, then bakes 3 more "
    "batches of 12. How many rolls does she have left?"
)
POLICY = {
    "classes": {
        "math": {"bucket": "use", "strategy": "cot", "thinking_budget": 64},
        "extraction": {"bucket": "use", "strategy": "best_of_n", "params": {"n": 3}},
        "lookup": {"bucket": "avoid", "strategy": "direct", "max_spend": 5},
    }
}


def answer(req: GenRequest, i: int) -> Reply:
    return Reply("Answer: 7 " + "word " * 20, reasoning="think " * 10)


def client(router: Router | None) -> tuple[httpx.AsyncClient, FunctionBackend]:
    backend = FunctionBackend(answer)
    gateway = Gateway(backend, ServerSettings(), router=router)
    app = create_app(backend, gateway=gateway)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t"), backend


def make_router(**extra: Any) -> Router:
    settings = RouterSettings.model_validate({**POLICY, **extra})
    return Router(settings, strategies=available_strategies())


async def post(c: httpx.AsyncClient, text: str, headers: dict[str, str] | None = None,
               **extra: Any) -> httpx.Response:  # fmt: skip
    body = {"model": "m", "messages": [{"role": "user", "content": text}], **extra}
    return await c.post("/v1/chat/completions", json=body, headers=headers or {})


async def test_router_plans_requests_that_choose_nothing() -> None:
    c, backend = client(make_router())
    async with c:
        r = await post(c, WORD_PROBLEM)
    assert r.status_code == 200, r.text
    assert r.headers["x-ponder-class"] == "math"
    assert r.headers["x-ponder-strategy"] == "cot"
    assert r.headers["x-ponder-thinking-budget"] == "64"
    (req,) = backend.calls
    assert req.thinking is not None and req.thinking.budget_tokens == 64


async def test_explicit_choices_win_but_the_class_is_still_recorded() -> None:
    c, backend = client(make_router())
    async with c:
        r = await post(c, WORD_PROBLEM, reasoning_effort="none")
    assert r.headers["x-ponder-class"] == "math"
    assert r.headers["x-ponder-strategy"] == "direct"
    assert backend.calls[0].thinking is None


async def test_preset_by_header_or_body() -> None:
    c, backend = client(make_router())
    async with c:
        by_header = await post(c, "Fix this please", headers={"x-ponder-preset": "data_analysis"})
        by_body = await post(c, "Fix this please", ponder={"preset": "codegen"})
        bad = await post(c, "Fix this please", ponder={"preset": "warp"})
    assert by_header.headers["x-ponder-class"] == "data_analysis"
    assert by_header.headers["x-ponder-thinking-budget"] == "2000"
    assert by_body.headers["x-ponder-class"] == "codegen"
    assert bad.status_code == 400
    assert "unknown preset 'warp'" in bad.json()["error"]["message"]
    assert bad.json()["error"]["param"] == "ponder.preset"
    assert len(backend.calls) == 2  # the rejected request never reached the model


async def test_max_spend_caps_the_request_budget() -> None:
    c, _ = client(make_router())
    async with c:
        r = await post(c, "What is 3+4?")
    assert r.headers["x-ponder-class"] == "lookup"
    assert r.json()["usage"]["completion_tokens"] <= 5


async def test_a_streamed_request_is_never_held_up_by_search() -> None:
    c, backend = client(make_router())
    text = "Extract the name and age fields from this text as JSON: Bob is 42."
    async with c:
        r = await post(c, text, stream=True)
        plain = await post(c, text)
    assert r.status_code == 200
    assert r.headers["x-ponder-strategy"] == "direct"
    assert plain.headers["x-ponder-strategy"] == "best_of_n"
    assert [req.n for req in backend.calls] == [1, 3]


async def test_without_a_router_every_request_is_general() -> None:
    c, _ = client(None)
    async with c:
        r = await post(c, WORD_PROBLEM)
    assert r.headers["x-ponder-class"] == "general"
    assert r.headers["x-ponder-strategy"] == "direct"


async def test_unconfigured_classes_keep_the_server_default() -> None:
    # Without the shipped default policy (policy = "none"), a class the config does not
    # name keeps the server's default strategy.
    backend = FunctionBackend(answer)
    gateway = Gateway(
        backend, ServerSettings(default_strategy="cot"), router=make_router(policy="none")
    )
    app = create_app(backend, gateway=gateway)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await post(c, "Tell me a story about a lighthouse keeper and a gull, a long one.")
    assert r.headers["x-ponder-class"] == "chat"
    assert r.headers["x-ponder-strategy"] == "cot"
