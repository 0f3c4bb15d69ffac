from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ponder.backends.base import Backend
from ponder.budget.metered import MeteredBackend
from ponder.strategies.base import RunContext, SamplingDefaults
from ponder.types import Budget, Problem, as_messages
from ponder.verifiers.base import Verifier

MakeCtx = Callable[..., RunContext]


@pytest.fixture
def problem() -> Problem:
    return Problem(messages=as_messages("What is 3 + 4?"))


@pytest.fixture
def make_ctx() -> MakeCtx:
    def make(
        backend: Backend,
        *,
        tokens: int | None = None,
        verifier: Verifier | None = None,
        **sampling: Any,
    ) -> RunContext:
        return RunContext(
            backend=MeteredBackend(backend, Budget(tokens=tokens)),
            verifier=verifier,
            sampling=SamplingDefaults(**sampling),
        )

    return make
