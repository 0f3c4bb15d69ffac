"""Tracing of strategy runs."""

from ponder.telemetry.trace import Tracer

__all__ = ["Tracer"]
