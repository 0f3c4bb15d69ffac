"""Every route, fuzzed from the request schemas the app publishes in its OpenAPI
document (schemathesis, in-process over ASGI): whatever a client sends, valid or
not, the answer is never a 5xx. On SQLite and PostgreSQL, with an admin key so
the admin handlers read their bodies too."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from ponder.backends.fake import FakeBackend, Reply
from ponder.budget.quota import Limit
from ponder.config import ServerSettings
from ponder.ledger import Store
from ponder.server.app import REQUEST_BODIES, create_app
from ponder.server.gateway import Gateway

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402

# Bounded so a run stays well under a minute on a loaded 2-core box: more examples
# for the routes that read a JSON body (where malformed input lands) than for the rest.
BODY_EXAMPLES = int(os.environ.get("PONDER_FUZZ_BODY_EXAMPLES", "25"))
OTHER_EXAMPLES = int(os.environ.get("PONDER_FUZZ_OTHER_EXAMPLES", "5"))
ANSWERABLE = {"role": "user", "content": "What is 2+2?"}


def _app(store: Store) -> tuple[Any, str]:
    backend = FakeBackend([Reply("The answer is 4")])
    gateway = Gateway(backend, ServerSettings(), store=store)
    _, secret = store.create_key("root", scopes=["admin", "reasoning", "strategies"])
    # Limits make every chat reserve and settle counters: the store sees each number.
    for metric in ("tokens", "cost", "requests"):
        store.set_limit(Limit("key", "*", metric, "day", 10**15))
    return create_app(backend, gateway=gateway), secret


def test_openapi_publishes_every_json_request_body() -> None:
    doc = create_app(FakeBackend(["x"]), ServerSettings()).openapi()
    for (path, method), model in REQUEST_BODIES.items():
        body = doc["paths"][path][method]["requestBody"]["content"]["application/json"]
        assert body["schema"] == {"$ref": f"#/components/schemas/{model.__name__}"}
    chat = doc["components"]["schemas"]["ChatCompletionRequest"]
    assert {"messages", "max_tokens", "stream", "ponder"} <= set(chat["properties"])
    assert chat["properties"]["max_tokens"]["anyOf"][0]["maximum"] == 2**31 - 1


def _fuzz(op: Any, mode: GenerationMode, auth: dict[str, str], statuses: set[int]) -> None:
    """Call ``op`` with generated requests; every answer must be below 500."""
    has_body = (op.path, op.method.lower()) in REQUEST_BODIES

    @settings(
        max_examples=BODY_EXAMPLES if has_body else OTHER_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(generation_mode=mode), answerable=st.booleans())
    def check(case: Any, answerable: bool) -> None:
        body = case.body
        if answerable and isinstance(body, dict) and isinstance(body.get("messages"), list):
            # Most random conversations end on a role nobody answers: end half of them
            # on a question, so the other fields reach planning, the store and the run.
            case.body = {**body, "messages": [*body["messages"], ANSWERABLE]}
        response = case.call(headers={**(case.headers or {}), **auth})
        statuses.add(response.status_code)
        assert response.status_code < 500, (op.label, case.body, response.text[:500])

    check()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_route_answers_a_5xx(store: Store, mode: GenerationMode) -> None:
    app, secret = _app(store)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    auth = {"authorization": f"Bearer {secret}"}
    statuses: dict[str, set[int]] = {}
    for op in operations:
        seen = statuses.setdefault(op.label, set())
        try:
            _fuzz(op, mode, auth, seen)
        except Unsatisfiable:
            # A route with nothing to get wrong (no parameters, no body) has no
            # negative cases; every route with a body or a parameter has some.
            assert mode == GenerationMode.NEGATIVE and not seen
            assert (op.path, op.method.lower()) not in REQUEST_BODIES, op.label
    if mode == GenerationMode.POSITIVE:
        # Every route was called (whether a random chat body also runs to a 200
        # varies from run to run; the run ends at the store either way).
        assert all(statuses.values()), statuses
    else:
        assert all(statuses[f"{m.upper()} {p}"] for p, m in REQUEST_BODIES), statuses
