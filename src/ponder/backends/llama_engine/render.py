"""Prompt text and tokens of the embedded engine: chat template, scratchpad, partial prefix."""

from __future__ import annotations

import ctypes
import secrets
import time
from typing import Any

from ponder.backends.scratchpad import scratchpad_messages
from ponder.errors import InvalidRequest
from ponder.tools import prompt_tools, template_messages
from ponder.types import GenRequest, Message

__all__ = ["ChatText"]


class ChatText:
    """Renders requests with the model's own chat template and tokenizes them safely."""

    def __init__(self, ll: Any, model: Any) -> None:
        self._ll = ll
        self._model = model
        self._vocab = model.vocab
        self._template = self._load_template()
        self._piece_cache: dict[int, bytes] = {}

    def _load_template(self) -> Any:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        source = self._model.metadata().get("tokenizer.chat_template")
        self.template_source: str = source or ""
        if not source:
            return None

        def raise_exception(message: str) -> None:
            raise InvalidRequest(f"chat template rejected the messages: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: time.strftime(fmt)
        return env.from_string(source)

    def render(self, req: GenRequest) -> str:
        return "".join(text for text, _ in self.render_parts(req))

    def prompt_tokens(self, req: GenRequest) -> list[int]:
        """The prompt's tokens; only the template's own text may produce control tokens."""
        tokens: list[int] = []
        for text, is_template in self.render_parts(req):
            if text:
                tokens += self.tokenize(text, special=is_template)
        return tokens

    def render_parts(self, req: GenRequest) -> list[tuple[str, bool]]:
        """The rendered prompt as (text, is_template_text) pieces, in order."""
        messages = list(req.messages)
        prefix = ""
        if req.continue_final:
            if messages[-1].role != "assistant":
                raise InvalidRequest(
                    "continue_final needs the last message to be a partial assistant message",
                    param="messages",
                )
            prefix = messages.pop().content
        opened = ""
        if req.thinking is not None and req.thinking.prompted and not req.continue_final:
            messages = scratchpad_messages(messages, req.thinking)
            opened = req.thinking.open_tag + "\n"
        messages, tools = prompt_tools(messages, req, self.template_source)
        contents = [m.content for m in messages]
        # Render with placeholders, then put each content back as plain text (an empty
        # content, e.g. an assistant turn that only calls tools, gets no placeholder).
        marks = [
            f"\x00ponder{secrets.token_hex(8)}:{i}\x00" if c else "" for i, c in enumerate(contents)
        ]
        dicts = [
            {**d, "content": mark}
            for d, mark in zip(template_messages(messages), marks, strict=True)
        ]
        if self._template is None:
            body = "".join(f"{m['role']}: {m['content']}\n" for m in dicts) + "assistant: "
        else:
            body = self._template.render(
                messages=dicts,
                tools=tools,
                add_generation_prompt=True,
                bos_token=self.token_text(self._model.token_bos()),
                eos_token=self.token_text(self._model.token_eos()),
            )
        parts: list[tuple[str, bool]] = []
        rest = body
        for mark, content in zip(marks, contents, strict=True):
            if not mark:
                continue
            head, found, rest_after = rest.partition(mark)
            if not found or mark in rest_after:
                # The template rewrote or repeated the content (rare): fall back.
                return self._render_plain(messages, prefix, opened, tools)
            parts += [(head, True), (content, False)]
            rest = rest_after
        parts += [(rest, True), (opened, True), (prefix, False)]
        return parts

    def _render_plain(
        self, messages: list[Message], prefix: str, opened: str, tools: Any
    ) -> list[tuple[str, bool]]:
        """Whole-prompt rendering for templates that rewrite message contents."""
        for m in messages:
            if self.tokenize(m.content, special=True) != self.tokenize(m.content, special=False):
                raise InvalidRequest(
                    "a message contains control-token text (e.g. '<|im_start|>') that this "
                    "model's chat template cannot keep apart from its own; remove it",
                    param="messages",
                )
        assert self._template is not None
        body = self._template.render(
            messages=template_messages(messages),
            tools=tools,
            add_generation_prompt=True,
            bos_token=self.token_text(self._model.token_bos()),
            eos_token=self.token_text(self._model.token_eos()),
        )
        return [(body, True), (opened, True), (prefix, False)]

    def token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.piece(token, special=True).decode("utf-8", "ignore")

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return list(self._model.tokenize(text.encode("utf-8"), add_bos=False, special=special))

    def piece(self, token: int, special: bool = False) -> bytes:
        if not special and token in self._piece_cache:
            return self._piece_cache[token]
        buf = ctypes.create_string_buffer(64)
        n = self._ll.llama_token_to_piece(self._vocab, token, buf, 64, 0, special)
        piece = buf.raw[: max(n, 0)]
        if not special:
            self._piece_cache[token] = piece
        return piece
