"""Verifiers judge candidates; strategies use them to choose."""

from ponder.verifiers.answers import extract_answer, extract_code, normalize_answer
from ponder.verifiers.base import Verifier
from ponder.verifiers.simple import (
    AgreementVerifier,
    ExactMatchVerifier,
    FunctionVerifier,
    MeanLogprobVerifier,
)

__all__ = [
    "AgreementVerifier",
    "ExactMatchVerifier",
    "FunctionVerifier",
    "MeanLogprobVerifier",
    "Verifier",
    "extract_answer",
    "extract_code",
    "normalize_answer",
]
