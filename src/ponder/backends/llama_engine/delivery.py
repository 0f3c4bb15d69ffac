"""What a job's sequence hands back: stop strings, stream deltas, the final generation."""

from __future__ import annotations

from ponder.backends.llama_engine.jobs import Job, Seq
from ponder.backends.scratchpad import holdback, visible_reasoning
from ponder.tools import with_tool_calls
from ponder.types import Delta, Generation, GenRequest, Usage

__all__ = ["apply_stop", "generation", "stream_deltas"]


def apply_stop(req: GenRequest, seq: Seq) -> None:
    """End the sequence at the first stop string in its visible text, cutting it off."""
    if not req.stop:
        return
    window = seq.out_text[-(max(len(s) for s in req.stop) + 16) :]
    for s in req.stop:
        if s and s in window:
            start = len(seq.out_text) - len(window) + window.index(s)
            seq.out_text = seq.out_text[:start]
            seq.finish, seq.stop_sequence = "stop", s
            return


def stream_deltas(job: Job, seq: Seq) -> list[Delta]:
    """What is safe to show now: text that may start a stop string or tag is held back."""
    cfg = job.req.thinking
    think_visible = visible_reasoning(seq.think_text, cfg)
    hold_t = (
        0
        if seq.finish or not seq.thinking
        else holdback(think_visible, [cfg.close_tag] if cfg else [])
    )
    new_think = think_visible[seq.emitted_think : len(think_visible) - hold_t]
    out_visible = seq.out_text.lstrip() if cfg is not None else seq.out_text
    hold_o = 0 if seq.finish else holdback(out_visible, job.req.stop)
    new_out = out_visible[seq.emitted_out : len(out_visible) - hold_o]
    seq.emitted_think += len(new_think)
    seq.emitted_out += len(new_out)
    deltas = []
    if new_think or new_out:
        deltas.append(Delta(index=seq.index, text=new_out, reasoning=new_think))
    if seq.finish is not None:
        gen = generation(job, seq)
        deltas.append(
            Delta(
                index=seq.index,
                finish_reason=gen.finish_reason,
                usage=gen.usage,
                stop_sequence=gen.stop_sequence,
            )
        )
    return deltas


def generation(job: Job, seq: Seq) -> Generation:
    """The finished sequence; its prompt tokens (evaluated or reused) count on sequence 0."""
    cfg = job.req.thinking
    reasoning = visible_reasoning(seq.think_text, cfg).strip() if cfg else ""
    text = seq.out_text.lstrip() if cfg is not None else seq.out_text
    first = seq.index == 0
    gen = Generation(
        text=text,
        reasoning=reasoning,
        finish_reason=seq.finish or "length",  # type: ignore[arg-type]
        usage=Usage(
            input=len(job.prompt) - job.reused if first else 0,
            cached_input=job.reused if first else 0,
            reasoning=len(seq.think_tokens),
            output=len(seq.out_tokens),
        ),
        logprobs=seq.logprobs if job.req.logprobs else None,
        stop_sequence=seq.stop_sequence,
    )
    return with_tool_calls(gen, job.req.tools, job.req.tool_choice)
