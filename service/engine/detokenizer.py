"""One incremental detokenizer for both engines: a reply's token ids in, its text out, piece by
piece, as the tokens arrive.

The text is exactly what decoding the whole reply gives (`skip_special_tokens=True`), streamed
as both engines streamed it when they decoded the whole reply again at every token: each piece
is the new whole text past what was sent, held back while the text ends in U+FFFD (half of a
multi-byte UTF-8 character: the next token may complete it); `tail()` is what was held back
when the reply ends. Decoding the whole reply per token costs O(n) per token and O(n^2) per
reply; here each token decodes a short window instead (as vLLM's detokenize_incrementally):
the tokens since the last point where the text was whole, after a few earlier tokens as
context, minus what that context alone decodes to. The context makes a tokenizer that treats
the first token of a sequence specially (SentencePiece drops its leading space) decode the new
tokens as it does inside the whole reply.

tests/service/engine/test_detokenizer.py checks, on random token sequences of the real tokenizer
(multi-byte pieces, special tokens, stop strings), that every piece equals the full decode's.
"""
from __future__ import annotations

HELD = "\ufffd"   # what a decode ends with while a multi-byte character is incomplete


class IncrementalDetokenizer:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._context = 0         # ids[_context:_read]: decoded before the new tokens as context
        self._read = 0            # ids[:_read] are in the text handed out
        self._context_text = ""   # decode(ids[_context:_read])

    def _decode(self, start: int, end: int | None = None) -> str:
        return self.tokenizer.decode(self.ids[start:end], skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        """Add a token; returns the text it completes ('' while half a character is held back).
        A token the tokenizer cannot decode raises and is not kept."""
        self.ids.append(token_id)
        try:
            text = self._decode(self._context)
        except Exception:
            self.ids.pop()
            raise
        if text.endswith(HELD):
            return ""
        piece = text[len(self._context_text):]
        if piece:   # a piece that decodes to nothing (a skipped special token) is no context
            self._context = self._read
        self._read = len(self.ids)
        self._context_text = self._decode(self._context, self._read)
        return piece

    def hold(self, token_id: int) -> None:
        """Add a token whose text is not streamed now (the local engine's stop token: it carries
        no text, but `tail()` includes whatever it decodes to, as the logged text does)."""
        self.ids.append(token_id)

    def tail(self) -> str:
        """The text not handed out yet: the held-back end of the reply, sent before its end."""
        if len(self.ids) == self._read:
            return ""
        return self._decode(self._context)[len(self._context_text):]
