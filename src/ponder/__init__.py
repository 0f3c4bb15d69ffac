"""ponder: decide how much thinking each LLM request gets, spend it well, account for every token."""

from ponder.api import Ponder, asolve, solve
from ponder.backends import Backend, FakeBackend, FunctionBackend, Reply, get_backend
from ponder.budget import MeteredBackend
from ponder.errors import BudgetExhausted, InvalidRequest, PonderError
from ponder.strategies import get_strategy
from ponder.types import (
    Budget,
    Candidate,
    Generation,
    GenRequest,
    Message,
    Outcome,
    Problem,
    Score,
    ThinkingConfig,
    Usage,
)

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "Budget",
    "BudgetExhausted",
    "Candidate",
    "FakeBackend",
    "FunctionBackend",
    "GenRequest",
    "Generation",
    "InvalidRequest",
    "Message",
    "MeteredBackend",
    "Outcome",
    "Ponder",
    "PonderError",
    "Problem",
    "Reply",
    "Score",
    "ThinkingConfig",
    "Usage",
    "asolve",
    "get_backend",
    "get_strategy",
    "solve",
]
