"""Stop strings (OpenAI's `stop`) over streamed text. Pure.

The reply's text ends just before the first stop string found. Text that could still turn
into a stop string is held back, so a client never receives a piece it must then un-see:
what was streamed is exactly the logged text. The token ids (and behavior log-probs) kept
are those sampled up to and including the token that completed the stop string -- the stop
was the model's action, as the end-of-turn token is -- so decode(token_ids) is the text,
the stop string, and at most the rest of that last token.
"""
from __future__ import annotations


class StopScanner:
    def __init__(self, stops: list[str] | tuple[str, ...]):
        self.stops = [s for s in stops if s]
        self.text = ""          # all text so far; cut before the stop string once one is found
        self.sent = 0           # characters of `text` handed out
        self.hit: str | None = None

    def feed(self, piece: str) -> str:
        """Add streamed text; return what may be sent now."""
        if self.hit is not None or not piece:
            return ""
        self.text += piece
        # An occurrence cannot begin before `sent`: its start would have been held back.
        found = [(i, s) for s in self.stops if (i := self.text.find(s, self.sent)) >= 0]
        if found:
            i, self.hit = min(found)
            self.text = self.text[:i]
            return self._take(i)
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        return self._take(len(self.text) - hold)

    def flush(self) -> str:
        """The stream ended without a stop string: the held-back text is plain text after all."""
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        out = self.text[self.sent:upto]
        self.sent = max(self.sent, upto)
        return out
