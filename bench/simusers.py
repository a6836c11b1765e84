"""Simulated users with a hidden preference, chatting with a live rewardloop server.

The hidden preference (configurable, never shown to the system): a user likes a reply that is
short (at most `liked_words` words and finished by itself, not cut at max_new_tokens) and, when
the question has a known answer, mentions it; a reply that rambles (cut off, or longer than
`ramble_words`) gets a thumbs down. Pleased users copy the reply now and then and ask the next
question in the same session (a continuation signal); displeased users leave.

`judge` is pure (no I/O), so the bench scores offline generations with the very same taste.
"""
from __future__ import annotations

import random
import re
import threading
import time
from dataclasses import dataclass, field

from bench.populations import NUMBER_WORDS as _ALL_NUMBER_WORDS
from bench.populations import TRAIN

# the original 16 questions of the thumbs-only bench (bench/populations.py holds them all,
# split into the ones users ask and held-out ones)
QUESTIONS: list[tuple[str, str | None]] = TRAIN[:16]
NUMBER_WORDS = _ALL_NUMBER_WORDS


@dataclass(frozen=True)
class Preference:
    liked_words: int = 30  # a reply this short (or shorter) that ended by itself can be liked
    ramble_words: int = 60  # longer than this is rambling
    need_answer: bool = True  # liked replies must mention the known answer, when there is one
    copy_prob: float = 0.3  # a pleased user copies the reply this often


@dataclass(frozen=True)
class Verdict:
    thumbs: int | None  # +1, -1 or None (no opinion)
    pleased: bool


def words(text: str) -> list[str]:
    return re.findall(r"[\w']+", text.lower())


def judge(pref: Preference, question: str, answer: str | None, reply: str, finish_reason: str) -> Verdict:
    """The hidden taste: short + answered -> thumbs up; rambling or cut off -> thumbs down."""
    w = words(reply)
    answered = answer is None or answer in w or NUMBER_WORDS.get(answer, "\0") in w or \
        (len(answer) > 2 and answer in reply.lower())
    if finish_reason != "stop" or len(w) > pref.ramble_words or not w:
        return Verdict(-1, False)
    if len(w) <= pref.liked_words and (answered or not pref.need_answer):
        return Verdict(+1, True)
    return Verdict(None, False)


def thumbs_reward(v: Verdict) -> float:
    return float(v.thumbs or 0)


@dataclass
class Turn:
    reply_id: str
    adapter_version: str
    question: str
    text: str
    finish_reason: str
    verdict: Verdict
    timing: dict | None = None   # TimedChat: sent, first_token, ended (time.time()), n_tokens
    taste: str = ""


@dataclass
class SimUser:
    user_id: str
    pref: Preference
    seed: int
    max_turns: int = 3
    turns: list[Turn] = field(default_factory=list)

    def converse(self, server, n_sessions: int) -> None:
        """n_sessions conversations over the websocket: ask, judge, give feedback, go on or leave."""
        from tests.support.clients import Chat  # the test suite's small websocket client
        rng = random.Random(self.seed)
        for _ in range(n_sessions):
            chat = Chat(server, server.token(self.user_id))
            try:
                for _ in range(self.max_turns):
                    question, answer = rng.choice(QUESTIONS)
                    got = chat.ask(question)
                    end = got["end"]
                    v = judge(self.pref, question, answer, got["text"], end["finish_reason"])
                    rid = got["start"]["reply_id"]
                    self.turns.append(Turn(rid, got["start"].get("adapter_version", "base"), question, got["text"],
                                           end["finish_reason"], v))
                    if v.thumbs is not None:
                        chat.feedback(rid, "thumbs", v.thumbs)
                    if v.pleased and rng.random() < self.pref.copy_prob:
                        chat.feedback(rid, "copy")
                    if not v.pleased:
                        break  # leave: no continuation signal for this reply
            finally:
                chat.close()


def run_users(server, users: list[SimUser], n_sessions: int, timeout: float = 900) -> list[Turn]:
    """All users chat at once (the server batches them); returns every turn."""
    errors: list[BaseException] = []
    for u in users:
        u.turns = []  # one round's turns

    def go(u: SimUser):
        try:
            u.converse(server, n_sessions)
        except Exception as exc:  # reported after the join: one broken user must not hang the bench
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(u,), daemon=True) for u in users]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, timeout - (time.monotonic() - t0)))
    if errors:
        raise RuntimeError(f"{len(errors)} simulated user(s) failed, first: {errors[0]!r}")
    return [t for u in users for t in u.turns]


class TimedChat:
    """tests.support.clients.Chat plus the client's clock: when a question (or a regenerate) was sent,
    when its first token and its end came."""

    def __init__(self, server, token: str):
        from tests.support.clients import Chat
        self.chat = Chat(server, token)
        self.sent = time.time()

    def ask(self, text: str) -> dict:
        self.sent = time.time()
        self.chat.send({"type": "user_message", "text": text, "client_msg_id": f"m{time.monotonic_ns()}"})
        return self.collect()

    def collect(self) -> dict:
        start = self.chat.recv_type("reply_start", timeout=600)
        text, first = "", None
        while True:
            f = self.chat.recv(timeout=600)
            if f["type"] == "token":
                first = first or time.time()
                text += f["text"]
            elif f["type"] == "reply_end":
                return {"start": start, "text": text, "end": f,
                        "timing": {"sent": self.sent, "first_token": first, "ended": time.time(),
                                   "n_tokens": f.get("n_tokens", 0)}}
            elif f["type"] == "error":
                raise RuntimeError(f"error while streaming: {f}")

    def feedback(self, reply_id: str, kind: str, value=None) -> dict:
        if kind == "regenerate":
            self.sent = time.time()
        return self.chat.feedback(reply_id, kind, value)

    def close(self) -> None:
        self.chat.close()


class Pacer:
    """When each simulated user of bench/loop.py may ask next: `think_s` (jittered 0.5-1.5x per
    turn) after its last reply ended, while the reply budget lasts; stop() ends every user's loop."""

    def __init__(self, budget: int, think_s: float, seed: int = 0):
        self.budget, self.think_s = budget, think_s
        self.issued = 0
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._rng = random.Random(seed)

    def go(self, last_end: float | None) -> bool:
        if last_end is not None:
            with self._lock:
                pause = self.think_s * self._rng.uniform(0.5, 1.5)
            if self.stopped.wait(max(0.0, last_end + pause - time.monotonic())):
                return False
        with self._lock:
            if self.stopped.is_set() or self.issued >= self.budget:
                return False
            self.issued += 1
            return True

    def stop(self) -> None:
        self.stopped.set()


@dataclass
class PopUser:
    """A user of one population (bench/populations.py): asks the training questions, judges each
    reply with the population's hidden taste and reacts the population's way:
      thumbs    thumbs +1/-1 on an opinion, copies a pleasing reply now and then
      ratings   5 / 3 / 1 stars
      implicit  no thumbs, no stars: reads (dwell) long and copies, then writes again when pleased;
                skims and regenerates (or leaves) when not; a neutral reply is read and sometimes
                followed up
    `reading_wpm` must match the reward config's, so a full read is a full read."""
    user_id: str
    taste: object  # populations.Taste
    seed: int
    max_turns: int = 3
    reading_wpm: float = 2300.0
    turns: list[Turn] = field(default_factory=list)

    def _dwell(self, chat, rid: str, text: str, share: float, started: float) -> None:
        expected = max(1, len(text.split())) / self.reading_wpm * 60.0
        time.sleep(max(0.0, started + share * expected - time.monotonic()))
        chat.feedback(rid, "dwell", int((time.monotonic() - started) * 1000))

    def converse(self, server, n_sessions: int) -> None:
        from bench.populations import TRAIN
        from tests.support.clients import Chat
        rng = random.Random(self.seed)
        for _ in range(n_sessions):
            chat = Chat(server, server.token(self.user_id))
            try:
                turn = 0
                while turn < self.max_turns:
                    question, answer = rng.choice(TRAIN)
                    u = self._react(chat, rng, question, answer, chat.ask(question))
                    turn += 1
                    if u < 0 or (u == 0 and rng.random() < 0.5):
                        break   # leave: no continuation signal for this reply
            finally:
                chat.close()

    def live(self, server, pacer: Pacer) -> None:
        """bench/loop.py: chat until the pacer says stop, a turn whenever it says go; a session ends
        when the user leaves (displeased, sometimes when indifferent, or after max_turns), and the
        next turn opens a new one."""
        from bench.populations import TRAIN
        rng = random.Random(self.seed)
        chat, turn, last_end = None, 0, None
        try:
            while pacer.go(last_end):
                if chat is None:
                    chat, turn = TimedChat(server, server.token(self.user_id)), 0
                question, answer = rng.choice(TRAIN)
                u = self._react(chat, rng, question, answer, chat.ask(question))
                last_end, turn = time.monotonic(), turn + 1
                if u < 0 or (u == 0 and rng.random() < 0.5) or turn >= self.max_turns:
                    chat.close()
                    chat = None
        finally:
            if chat is not None:
                chat.close()

    def _react(self, chat, rng: random.Random, question: str, answer, got: dict) -> int:
        """Judge the reply, give this population's feedback (a regenerated reply is judged again,
        once); returns the last verdict (+1 / 0 / -1)."""
        for attempt in range(2):
            rid, end = got["start"]["reply_id"], got["end"]
            started = time.monotonic()
            u = self.taste.judge(answer, got["text"], end["finish_reason"])
            self.turns.append(Turn(rid, got["start"].get("adapter_version", "base"), question, got["text"],
                                   end["finish_reason"], Verdict(u or None, u > 0), got.get("timing"),
                                   self.taste.name))
            mode = self.taste.feedback
            if (mode == "thumbs" or (mode == "sparse_thumbs" and rng.random() < 0.5)) and u:
                chat.feedback(rid, "thumbs", u)
            elif mode == "ratings":
                chat.feedback(rid, "rating", {1: 5, 0: 3, -1: 1}[u])
            elif mode == "implicit":
                self._dwell(chat, rid, got["text"], 1.3 if u >= 0 else 0.2, started)
            if u > 0 and rng.random() < (0.5 if mode == "implicit" else 0.3):
                chat.feedback(rid, "copy")
            if u < 0 and mode == "implicit" and attempt == 0 and rng.random() < 0.5:
                ack = chat.feedback(rid, "regenerate")
                if ack.get("type") == "ack":
                    got = chat.collect()
                    continue
            return u
        return u
