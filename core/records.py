"""The records that cross a boundary, in one place (as SGLang keeps its IPC structs in
io_struct.py): what one part writes to Redis or the archive and another part reads. Pure.

Each record is a frozen dataclass on core/record_format.Record, with
  - `to_redis()` / `from_redis()`: the exact strings Redis holds (lists and dicts as JSON,
    numbers as their repr, None left out), so a hash read, decoded and written back is the
    hash it was;
  - `arrow_schema()` / `to_row()` / `from_row()`: its table in the Parquet archive;
  - `SCHEMA_VERSION` (stored in every archive file's metadata) and `TABLE`, `ID` (the column
    a duplicate is dropped by on read).
Decoding is lenient and lossless: a value that does not parse as its field's type (an empty
reward, a hand-written hash) keeps its raw string in `extra`, as do fields the class does not
name, so nothing a writer stored is lost on the way to the archive and back.

    record        Redis (written by)                                  archive table
    ReplyRecord   reply:{id} hash (server, service/serving/chat.py)   replies
    SessionRecord session_meta/session/session_replies (server)       sessions
    EventRecord   `events` stream entry (server; derived: workers)    events
    RewardEntry   reward:{id} + reward_signals:{id} (reward workers)  ledger
    FinalReward   `rewards` stream entry (reward workers)             rewards
    PairRecord    `pairs` stream entry (reward workers)               pairs
The adapter folder's manifest.json has its own record: core/manifest.AdapterManifest.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from core.record_format import FLOAT, FLOATS, INT, INTS, JSON, STR, STRS, Record, col
from core.sampling import SamplingParams

FINAL_STATES = ("rewarded", "defaulted", "unscored", "excluded")  # a ledger entry no longer pending
# explicit feedback (a person rated the reply): kept REWARDLOOP_RETENTION_RATED_DAYS
EXPLICIT_KINDS = ("thumbs", "rating", "choose", "reasons")


@dataclass(frozen=True, kw_only=True)
class ReplyRecord(Record):
    """One generated reply: the prompt exactly as served, the tokens and behavior log-probs, how
    it was sampled and by which adapter version, and its times."""
    TABLE: ClassVar[str] = "replies"
    ID: ClassVar[str] = "reply_id"
    reply_id: str = col(STR, "rep_... id")
    user_id: str = col(STR, "who asked")
    session_id: str = col(STR, "the session (conversation) it belongs to")
    turn: int = col(INT, "index of the turn in the session (0 = first)")
    api: str = col(STR, "ws | openai")
    client_msg_id: str = col(STR, "the client's id of the user message")
    user_text: str = col(STR, "what the user wrote")
    prompt_messages: list = col(JSON, "the chat messages of the prompt (system, the turns that fit, this one)")
    prompt_ids: list = col(INTS, "prompt token ids as fed to the model")
    history_dropped: int = col(INT, "older turns dropped to fit the context budget")
    text: str = col(STR, "the reply text as streamed")
    token_ids: list = col(INTS, "reply token ids")
    logprobs: list = col(FLOATS, "behavior log-prob of each reply token under the sampling distribution")
    params: dict = col(JSON, "sampling params (temperature, top_p, max_new_tokens, seed)")
    rerank: dict = col(JSON, "best-of-N summary when the reply was reranked")
    adapter_version: str = col(STR, "'base' or the adapter version number")
    model_id: str = col(STR, "base model id")
    queued_at: float = col(FLOAT, "epoch s the request was queued")
    first_token_at: float = col(FLOAT, "epoch s of the first token")
    ended_at: float = col(FLOAT, "epoch s the reply ended")
    finish_reason: str = col(STR, "stop | length | cancelled | error")
    n_tokens: int = col(INT, "reply tokens")
    error: str = col(STR, "engine error, if any")
    prefix_reused: int = col(INT, "prompt tokens taken from the prefix cache (replay rebuilds the path)")
    peak_rows: int = col(INT, "most streams decoded beside it in one batch")
    candidates: list = col(JSON, "reply ids of the candidates of this turn")
    replaces: str = col(STR, "the reply this one regenerated")
    parent_id: str = col(STR, "the reply this turn follows in the conversation tree ('' = the first turn)")
    stop: list = col(JSON, "stop strings (OpenAI API)")
    stop_string: str = col(STR, "the stop string that ended it")
    client: dict = col(JSON, "what an API client said about itself")
    opt_out: int = col(INT, "1: the user's token opted out of learning")
    logged_at: float = col(FLOAT, "epoch s the record was written")
    quality: dict = col(JSON, "scores read at the reply's end, every key optional (worker/rewards/quality.py): unsafe "
                              "(P 0..1) and safety_scorer; relevance and fluency (z-scores against the base model's own "
                              "replies) with relevance_pmi, fluency_logprob (nats/token), scored_tokens; absent (why "
                              "the base-model scores are missing, e.g. the vLLM engine)")

    def sampling(self) -> SamplingParams:
        return sampling_params(self.params)


@dataclass(frozen=True, kw_only=True)
class SessionRecord(Record):
    """A session: its meta hash plus its turn list (`history`) and every reply generated in it."""
    TABLE: ClassVar[str] = "sessions"
    ID: ClassVar[str] = "session_id"
    NOT_IN_HASH: ClassVar[tuple[str, ...]] = ("session_id", "history", "replies")
    session_id: str = col(STR, "s_... id")
    user_id: str = col(STR, "owner")
    created: float = col(FLOAT, "epoch s")
    last_active: float = col(FLOAT, "epoch s of the last reply")
    title: str = col(STR, "title from the first message (a user's rename is in session_titles)")
    history: list = col(STRS, "reply ids that form the conversation, in turn order")
    replies: list = col(STRS, "every reply id generated in the session (candidates, regenerations)")


@dataclass(frozen=True, kw_only=True)
class EventRecord(Record):
    """One `events` stream entry: a reply, a user message, a feedback, or a derived
    continuation/abandon. Feedback = the kinds users send (thumbs, rating, choose, copy, reasons,
    regenerate, dwell); `value` is kept exactly as stored (numbers JSON, candidate ids as is)."""
    TABLE: ClassVar[str] = "events"
    ID: ClassVar[str] = "stream_id"
    NOT_IN_HASH: ClassVar[tuple[str, ...]] = ("stream_id",)
    stream_id: str = col(STR, "Redis stream id (ms-seq)")
    kind: str = col(STR, "reply | user_message | thumbs | rating | choose | copy | regenerate | dwell | reasons | "
                         "sibling | edited | continuation | abandon")
    event_id: str = col(STR, "ev_... id a signal is counted once by")
    feedback_id: str = col(STR, "the client's idempotency id")
    reply_id: str = col(STR, "the reply it is about")
    session_id: str = col(STR, "session")
    user_id: str = col(STR, "who sent it")
    adapter_version: str = col(STR, "version that served the reply")
    value: str = col(STR, "the value as stored: thumbs +1/-1, rating 1-5, dwell ms, the other candidate id")
    tags: list = col(JSON, "reason tags (core/feedback_tags.py) sent with the feedback")
    comment: str = col(STR, "a free-text reason sent with the feedback")
    client_time: str = col(STR, "the client's clock, as sent")
    client_msg_id: str = col(STR, "user_message: the client's message id")
    turn: int = col(INT, "user_message: the turn index")
    server_time: float = col(FLOAT, "epoch s the server stored it")
    since_reply_end_ms: int = col(INT, "ms between the reply's end and this event")
    derived: int = col(INT, "1: written by the server or workers, not sent by a user")

    @property
    def explicit(self) -> bool:
        return self.kind in EXPLICIT_KINDS


@dataclass(frozen=True, kw_only=True)
class RewardEntry(Record):
    """The ledger entry of one reply (reward:{id}) and its signals (reward_signals:{id},
    event id -> signal JSON as stored)."""
    TABLE: ClassVar[str] = "ledger"
    ID: ClassVar[str] = "reply_id"
    NOT_IN_HASH: ClassVar[tuple[str, ...]] = ("signals",)
    reply_id: str = col(STR, "reply")
    state: str = col(STR, "pending | rewarded | defaulted | unscored | excluded")
    user_id: str = col(STR, "owner")
    session_id: str = col(STR, "session")
    adapter_version: str = col(STR, "version that served it")
    ended_at: float = col(FLOAT, "epoch s the reply ended")
    due_at: float = col(FLOAT, "epoch s the reward becomes final")
    opened_at: float = col(FLOAT, "epoch s a worker opened the entry")
    replaces: str = col(STR, "the reply this one regenerated")
    opt_out: int = col(INT, "1: never learned from")
    late_signals: int = col(INT, "signals that arrived after it was final")
    late: int = col(INT, "1: at least one late signal")
    reward: float = col(FLOAT, "final reward (empty: none)")
    total: float = col(FLOAT, "clipped sum of the components")
    raw_sum: float = col(FLOAT, "sum before clipping")
    has_signal: int = col(INT, "1: a user signal contributed")
    components: dict = col(JSON, "component -> value")
    explain: list = col(JSON, "one line per component")
    notes: list = col(JSON, "guards and other notes")
    config_hash: str = col(STR, "reward config it was computed with")
    user_weight: float = col(FLOAT, "anomaly weight of the user")
    anomaly_reason: str = col(STR, "why the user was down-weighted")
    unsafe_voter_reason: str = col(STR, "why the user was down-weighted as liking unsafe replies")
    unsafe: float = col(FLOAT, "the reply's unsafe level (scorer, safety words, the user's report), if any")
    vetoed: int = col(INT, "1: unsafe level >= safety_threshold: never a positive example")
    veto: str = col(STR, "why it was vetoed")
    positive: int = col(INT, "the user signalled it positively: 1 it was unsafe, 0 it was not (unsafe-voter weight)")
    n_signals: int = col(INT, "signals at finalization")
    finalized_at: float = col(FLOAT, "epoch s")
    signals: dict = col(JSON, "event id -> signal JSON string, as the workers stored them")

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def explicit(self) -> bool:
        return any(json.loads(s).get("kind") in EXPLICIT_KINDS for s in (self.signals or {}).values())

    def signal_list(self) -> list[dict]:
        return sorted((json.loads(s) for s in (self.signals or {}).values()), key=lambda s: s.get("ts", 0))


@dataclass(frozen=True, kw_only=True)
class FinalReward(Record):
    """One `rewards` stream entry: a reply's reward became final (what the learner trains on)."""
    TABLE: ClassVar[str] = "rewards"
    ID: ClassVar[str] = "stream_id"
    NOT_IN_HASH: ClassVar[tuple[str, ...]] = ("stream_id",)
    stream_id: str = col(STR, "Redis stream id (ms-seq): the learner's cursor")
    reply_id: str = col(STR, "reply")
    user_id: str = col(STR, "owner")
    session_id: str = col(STR, "session")
    adapter_version: str = col(STR, "version that served it")
    state: str = col(STR, "rewarded | defaulted | unscored | excluded")
    reward: float = col(FLOAT, "final reward (empty: none)")
    config_hash: str = col(STR, "reward config")
    user_weight: float = col(FLOAT, "anomaly weight")
    opt_out: int = col(INT, "1: never learned from")
    finalized_at: float = col(FLOAT, "epoch s")
    components: str = col(STR, "comma-separated names of the components that fired")
    vetoed: int = col(INT, "1: unsafe, never a positive example")

    @property
    def explicit(self) -> bool:
        return any(c in EXPLICIT_KINDS for c in (self.components or "").split(","))


@dataclass(frozen=True, kw_only=True)
class PairRecord(Record):
    """One `pairs` stream entry: a preference between two replies to one prompt."""
    TABLE: ClassVar[str] = "pairs"
    ID: ClassVar[str] = "stream_id"
    NOT_IN_HASH: ClassVar[tuple[str, ...]] = ("stream_id",)
    stream_id: str = col(STR, "Redis stream id")
    chosen_id: str = col(STR, "preferred reply")
    rejected_id: str = col(STR, "the other reply")
    source: str = col(STR, "choose | regenerate")
    user_id: str = col(STR, "who expressed it")
    session_id: str = col(STR, "session")

    @property
    def explicit(self) -> bool:
        return self.source == "choose"


TABLES: dict[str, type[Record]] = {c.TABLE: c for c in (ReplyRecord, SessionRecord, EventRecord, RewardEntry,
                                                        FinalReward, PairRecord)}
STREAM_TABLES = ("events", "rewards", "pairs")  # archived by stream id range; the others by session


def stream_ms(stream_id: str) -> int:
    """The millisecond part of a stream id."""
    return int(stream_id.split("-", 1)[0])


def stream_key(stream_id: str) -> tuple[int, int]:
    """Stream ids in their numeric order ('9-1' < '10-0')."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


# --- decoded dicts, for readers that still take dicts (devtools JSON) ---------------------------
JSON_FIELDS = ("prompt_messages", "prompt_ids", "token_ids", "logprobs", "params", "candidates", "rerank")
FLOAT_FIELDS = ("queued_at", "first_token_at", "ended_at", "logged_at")
INT_FIELDS = ("turn", "n_tokens", "history_dropped", "opt_out", "prefix_reused", "peak_rows")


def decode_reply(h: Mapping[str, str]) -> dict:
    """A reply hash (strings) -> typed dict (lists, dicts, numbers); a field that does not
    decode is left as stored (readers decide whether they can do without it)."""
    rec = ReplyRecord.from_redis(h)
    return reply_dict(rec)


def reply_dict(rec: ReplyRecord) -> dict:
    """The record as the dict `sessions show --json` prints: typed fields, then what did not parse."""
    out = {f.name: getattr(rec, f.name) for f in rec.columns() if getattr(rec, f.name) is not None}
    out.update(rec.extra)
    return out


def sampling_params(p: Mapping | None) -> SamplingParams:
    """The sampling params a reply was drawn with, from its decoded `params` (ValueError/TypeError
    when they are not valid: the reply cannot be re-scored)."""
    p = p or {}
    return SamplingParams(temperature=float(p.get("temperature", 0.7)), top_p=float(p.get("top_p", 0.9)),
                          max_new_tokens=int(p.get("max_new_tokens", 256)), seed=int(p.get("seed", 0)))


def finite_logprobs(rec: ReplyRecord) -> bool:
    return bool(rec.logprobs) and all(map(math.isfinite, rec.logprobs))
