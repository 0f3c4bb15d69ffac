"""Thinking budgets in the embedded engine: forced end of thought and s1-style "Wait" extension."""

from __future__ import annotations

from collections.abc import Callable

from ponder.backends.llama_engine.jobs import Job, Seq
from ponder.backends.llama_engine.render import ChatText
from ponder.types import ThinkingConfig

__all__ = ["ThinkingControl"]


class ThinkingControl:
    """Counts thinking tokens, forces the closing delimiter, rolls back early closes.

    ``cut(seq_id, p0)`` removes a sequence's KV from position ``p0`` on.
    """

    def __init__(self, text: ChatText, cut: Callable[[int, int], object]) -> None:
        self._text = text
        self._cut = cut

    def close_tokens(self, cfg: ThinkingConfig) -> list[int]:
        return self._text.tokenize("\n" + cfg.close_tag + "\n\n", special=False)

    def after_token(self, job: Job, seq: Seq, is_eog: bool) -> None:
        """Called after each token chosen inside a thought."""
        cfg = job.req.thinking
        assert cfg is not None
        if seq.closing:
            if not seq.forced:  # the forced close tag is complete: answer from here
                seq.closing = False
                seq.thinking = False
            return
        if is_eog:
            # The model tried to stop inside its thoughts: close them and ask for the answer.
            seq.think_tokens.pop()
            self._force_close(cfg, seq)
            seq.next_token = seq.forced.pop(0)
            seq.think_tokens.append(seq.next_token)
            self._add_piece(seq, seq.next_token)
            return
        if seq.think_text.rstrip().endswith(cfg.close_tag):
            if len(seq.think_tokens) < cfg.min_tokens and seq.extensions < cfg.max_extensions:
                self._extend(seq, cfg)
            else:
                seq.thinking = False
            return
        # Force the delimiter early enough that reasoning never exceeds the cap.
        if len(seq.think_tokens) + len(self.close_tokens(cfg)) >= job.think_cap:
            self._force_close(cfg, seq)

    def _force_close(self, cfg: ThinkingConfig, seq: Seq) -> None:
        seq.forced = self.close_tokens(cfg)
        seq.closing = True

    def _add_piece(self, seq: Seq, token: int) -> None:
        piece = self._text.piece(token)
        seq.think_bytes += piece
        seq.think_text += seq.think_decoder.decode(piece)

    def _extend(self, seq: Seq, cfg: ThinkingConfig) -> None:
        """s1-style: undo the end-of-thinking delimiter and continue with "Wait"."""
        cut = seq.think_text.rstrip().rfind(cfg.close_tag)
        # Find how many trailing tokens make up the delimiter (and whitespace before it).
        drop, text_len = 0, len(seq.think_text)
        while drop < len(seq.think_tokens) and text_len > cut:
            drop += 1
            piece = self._text.piece(seq.think_tokens[-drop]).decode("utf-8", "ignore")
            text_len -= len(piece)
        kept = seq.think_tokens[:-drop] if drop else seq.think_tokens
        # Tokens fed to the model so far are all but the last accepted one.
        first_removed_pos = seq.pos - (drop - 1)
        self._cut(seq.seq_id, first_removed_pos)
        seq.pos = first_removed_pos
        seq.think_tokens = list(kept)
        seq.think_bytes = bytearray(b"".join(self._text.piece(t) for t in kept))
        seq.think_text = seq.think_bytes.decode("utf-8", "ignore")
        seq.think_decoder.reset()
        seq.extensions += 1
        wait = self._text.tokenize("\n" + cfg.extend_with, special=False)
        seq.next_token = wait[0]
        seq.forced = wait[1:]
        seq.think_tokens.append(wait[0])
        self._add_piece(seq, wait[0])
        # The extension tokens are part of the reasoning; the pieces of the rest
        # arrive as they are "chosen" from the forced queue.
