"""Verifiers judge candidates; strategies use them to choose."""

from ponder.verifiers.answers import extract_answer, extract_code, normalize_answer
from ponder.verifiers.base import Verifier
from ponder.verifiers.code import CodeExecutionVerifier, public_tests_from_prompt
from ponder.verifiers.compose import GateThenScore, WeightedSum
from ponder.verifiers.confidence import SelfCertaintyVerifier, TokenProbVerifier, self_certainty
from ponder.verifiers.judge import LLMJudgeVerifier
from ponder.verifiers.math_answer import MathVerifier
from ponder.verifiers.prm import (
    FunctionPRM,
    GenerativePRM,
    StepScoring,
    StepVerifier,
    aggregate,
    split_steps,
)
from ponder.verifiers.sandbox import SandboxLimits, SandboxResult, arun_python, run_python
from ponder.verifiers.simple import (
    AgreementVerifier,
    ExactMatchVerifier,
    FunctionVerifier,
    MeanLogprobVerifier,
)
from ponder.verifiers.structured import ExactTextVerifier, JsonSchemaVerifier, RegexVerifier

__all__ = [
    "AgreementVerifier",
    "CodeExecutionVerifier",
    "ExactMatchVerifier",
    "ExactTextVerifier",
    "FunctionPRM",
    "FunctionVerifier",
    "GateThenScore",
    "GenerativePRM",
    "JsonSchemaVerifier",
    "LLMJudgeVerifier",
    "MathVerifier",
    "MeanLogprobVerifier",
    "RegexVerifier",
    "SandboxLimits",
    "SandboxResult",
    "SelfCertaintyVerifier",
    "StepScoring",
    "StepVerifier",
    "TokenProbVerifier",
    "Verifier",
    "WeightedSum",
    "aggregate",
    "arun_python",
    "extract_answer",
    "extract_code",
    "normalize_answer",
    "public_tests_from_prompt",
    "run_python",
    "self_certainty",
    "split_steps",
]
