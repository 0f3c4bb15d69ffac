"""vLLM in-process (``pip install 'ponder[vllm]'``, GPU only) for batch evaluation.

vLLM is imported when the backend is built, never at import time. A request's
``n`` samples are one vLLM request (shared prompt, prefix caching on), and
concurrent requests batch together inside vLLM's engine. Thinking uses the
model's own ``<think>`` delimiters; the budget is enforced by the client-side
protocol of the HTTP backend (think until the budget, close the thought, ask
for the answer) on top of vLLM's offline ``generate``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from ponder.backends.openai_wire import render_chat
from ponder.backends.scratchpad import split_think
from ponder.errors import InvalidRequest, ModelNotAvailable
from ponder.types import Capabilities, Delta, Generation, GenRequest, TokenLogprob, Usage

__all__ = ["VLLMBackend"]


class VLLMBackend:
    """A local vLLM engine (``vllm.LLM``) behind ponder's backend protocol."""

    def __init__(
        self,
        model: str,
        *,
        name: str | None = None,
        enable_prefix_caching: bool = True,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        chat_template: str | None = None,
        **engine_kwargs: Any,
    ) -> None:
        try:
            import vllm
        except ImportError as exc:  # pragma: no cover - depends on the machine
            raise ModelNotAvailable(
                "the vllm backend needs vLLM and a GPU: pip install 'ponder[vllm]'"
            ) from exc
        self._vllm = vllm
        self.name = name or f"vllm:{model}"
        self.llm = vllm.LLM(
            model=model,
            enable_prefix_caching=enable_prefix_caching,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            **engine_kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.chat_template = chat_template
        # vLLM's offline engine runs one generate() at a time; calls queue here.
        self._lock = asyncio.Lock()
        self.capabilities = Capabilities(
            native_n=True,
            logprobs=True,
            thinking_budget=False,
            continue_final=True,
            prefix_cache=enable_prefix_caching,
            max_context=max_model_len,
        )

    def render(self, req: GenRequest) -> str:
        if req.continue_final and req.messages[-1].role != "assistant":
            raise InvalidRequest(
                "continue_final needs the last message to be a partial assistant message",
                param="messages",
            )
        if self.chat_template is not None:
            msgs = req.messages if req.continue_final else [*req.messages]
            return render_chat(msgs, self.chat_template, continue_final=req.continue_final)
        dicts = [{"role": m.role, "content": m.content} for m in req.messages]
        text: str = self.tokenizer.apply_chat_template(
            dicts,
            tokenize=False,
            add_generation_prompt=not req.continue_final,
            continue_final_message=req.continue_final,
        )
        return text

    def _params(self, req: GenRequest) -> Any:
        return self._vllm.SamplingParams(
            n=req.n,
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k if req.top_k > 0 else -1,
            seed=req.seed,
            stop=list(req.stop) or None,
            logprobs=max(req.top_logprobs, 1) if req.logprobs else None,
            ignore_eos=req.ignore_eos,
        )

    def _run(self, prompt: str, req: GenRequest) -> list[Generation]:
        (result,) = self.llm.generate([prompt], self._params(req), use_tqdm=False)
        prompt_tokens = len(result.prompt_token_ids or [])
        cached = int(getattr(result, "num_cached_tokens", 0) or 0)
        gens: list[Generation] = []
        for i, out in enumerate(result.outputs):
            reasoning, text = split_think(out.text)
            n_tokens = len(out.token_ids)
            n_reasoning = len(self.tokenizer.encode(reasoning, add_special_tokens=False))
            n_reasoning = min(n_reasoning, n_tokens) if reasoning else 0
            lps = None
            if req.logprobs and out.logprobs:
                lps = []
                for tid, entry in zip(out.token_ids, out.logprobs, strict=False):
                    chosen = entry[tid]
                    lps.append(
                        TokenLogprob(
                            token=chosen.decoded_token or "",
                            logprob=float(chosen.logprob),
                            top={(v.decoded_token or ""): float(v.logprob) for v in entry.values()}
                            if req.top_logprobs
                            else {},
                        )
                    )
            gens.append(
                Generation(
                    text=text,
                    reasoning=reasoning,
                    finish_reason="length" if out.finish_reason == "length" else "stop",
                    usage=Usage(
                        input=max(prompt_tokens - cached, 0) if i == 0 else 0,
                        cached_input=cached if i == 0 else 0,
                        reasoning=n_reasoning,
                        output=n_tokens - n_reasoning,
                        reasoning_estimated=bool(reasoning),
                        output_estimated=bool(reasoning),
                    ),
                    logprobs=lps,
                )
            )
        return gens

    async def generate(self, req: GenRequest) -> list[Generation]:
        prompt = self.render(req)
        async with self._lock:
            return await asyncio.to_thread(self._run, prompt, req)

    async def stream(self, req: GenRequest) -> AsyncIterator[Delta]:
        # The offline engine has no token stream: one delta with the whole answer.
        (gen,) = await self.generate(req.model_copy(update={"n": 1}))
        if gen.reasoning or gen.text:
            yield Delta(reasoning=gen.reasoning, text=gen.text)
        yield Delta(finish_reason=gen.finish_reason, usage=gen.usage)
