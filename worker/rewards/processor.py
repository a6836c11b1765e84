"""The reward pipeline, step by step: events -> signals in the ledger -> final rewards.

Exactly once: every write is keyed (a signal by its event id, an entry by its reply id, a
final reward by the entry's pending state), so an event processed twice - redelivered after a
worker died, or taken by a second worker - changes nothing; entries are acked only after the
ledger holds their effect. Redis I/O goes through RewardLedger; the reward is rewards.py's.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass, field

import redis

from worker.rewards.batches import anomaly_weight, unsafe_voter_weight
from worker.rewards.config import RewardConfig, config_hash
from worker.rewards.function import ACTION_KINDS, USER_COMPONENTS, RewardBreakdown, compute_reward, finalize_state
from worker.rewards.ledger import RewardLedger, SignalOp
from worker.rewards.ledger_lua import Applied, Finalized, Opened
from worker.rewards.pairs import is_kept
from worker.rewards.signals import Event, PoisonEvent, choose_pair, parse_event, reply_facts, signals_of, vote_of

log = logging.getLogger(__name__)

BATCH = 500  # events per ledger call: larger batches amortize the fsync of each write round trip
FINALIZE_LEASE_S = 30.0
CONSUMER_FORGET_S = 3600  # a consumer (worker process) silent this long with nothing pending is gone
FINALIZE_RETRIES = 5


def consumer_name() -> str:
    """One consumer per worker process: what it holds pending is reclaimed if it dies."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class BatchResult:
    acked: int = 0
    failed: int = 0
    finalized: int = 0
    errors: list[str] = field(default_factory=list)


# --- events -> ledger --------------------------------------------------------------------------
def _open_entry(ledger: RewardLedger, cfg: RewardConfig, reply_id: str, ev: Event, now: float) -> None:
    if ledger.ensure_entry(reply_id, cfg.wait_window_s, now) == Opened.NO_SUCH_REPLY:
        raise PoisonEvent(f"event {ev.stream_id}: reply {reply_id!r} does not exist")


def _update_user_weight(ledger: RewardLedger, cfg: RewardConfig, user_id: str, now: float) -> None:
    weight, reason = anomaly_weight(ledger.recent_votes(user_id), cfg)
    ledger.set_user_weight(user_id, weight, reason, now)
    if reason:
        log.info("user %s weighted %.2f: %s", user_id, weight, reason)


def handle_event(ledger: RewardLedger, cfg: RewardConfig, ev: Event, now: float) -> None:
    """Write the effect of one event to the ledger (idempotent)."""
    if ev.kind == "user_message":
        return
    if ev.kind == "reply":
        _open_entry(ledger, cfg, ev.reply_id, ev, now)
        return
    pair, vote = choose_pair(ev), vote_of(ev)
    new_vote = False
    for reply_id, signal in signals_of(ev):
        _open_entry(ledger, cfg, reply_id, ev, now)  # a second worker may hold the `reply` event
        result = ledger.apply_signal(reply_id, ev.user_id, signal, pair, vote)
        new_vote |= bool(vote) and result != Applied.DUPLICATE
        pair = vote = None  # the pair and the vote travel with the first signal only
        if result == Applied.LATE:
            log.info("late %s on final reply %s: recorded, reward unchanged", ev.kind, reply_id)
    if new_vote:
        _update_user_weight(ledger, cfg, ev.user_id, now)
    if ev.kind == "abandon":  # abandonment means the session ended: its rewards are due now
        ledger.end_session(ev.session_id, now)


def plan_event(ev: Event) -> tuple[list[SignalOp], str | None]:
    """What one event asks of the ledger: (signal ops, session to end or None). Pure; the
    batched twin of handle_event (the pair and the vote travel with the first signal only)."""
    if ev.kind == "user_message":
        return [], None
    if ev.kind == "reply":
        return [SignalOp(ev.reply_id)], None
    pair, vote = choose_pair(ev), vote_of(ev)
    ops = []
    for reply_id, signal in signals_of(ev):
        ops.append(SignalOp(reply_id, ev.user_id, ev.event_id, signal, pair, vote))
        pair = vote = None
    return ops, (ev.session_id or None) if ev.kind == "abandon" else None


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def process_entries(ledger: RewardLedger, cfg: RewardConfig, entries: list[tuple[str, dict]],
                    result: BatchResult) -> None:
    """Handle a batch: one atomic ledger call for all its events, then weights and acks in one
    more round trip. An entry that fails stays pending (to be retried or dead-lettered by
    reclaim_stale) and never blocks the others; a batch the ledger refuses as a whole (a script
    error) is retried entry by entry, which isolates the culprit."""
    now = time.time()
    done: list[str] = []
    errors: dict[str, str] = {}
    planned: list[tuple[Event, tuple[list[SignalOp], str | None]]] = []
    for stream_id, fields in entries:
        try:
            ev = parse_event(stream_id, fields)
            plan = plan_event(ev)
        except Exception as exc:  # isolate the entry: record why, keep it pending, go on
            errors[stream_id] = _error(exc)
            continue
        if plan[0]:
            planned.append((ev, plan))
        else:
            done.append(stream_id)
    try:
        results, votes = ledger.apply_batch([p for _, p in planned], cfg.wait_window_s, now) if planned else ([], {})
    except redis.ResponseError as exc:
        log.warning("batch of %d event(s) refused (%s): processing them one by one", len(entries), _error(exc))
        process_one_by_one(ledger, cfg, entries, result)
        return
    new_voters, late = set(), 0
    for (ev, _), res in zip(planned, results):
        if res[0] == Opened.NO_SUCH_REPLY:
            errors[ev.stream_id] = _error(PoisonEvent(f"event {ev.stream_id}: reply {res[1]!r} does not exist"))
            continue
        done.append(ev.stream_id)
        late += res[1:].count(Applied.LATE)
        if vote_of(ev) and any(r != Applied.DUPLICATE for r in res[1:]):
            new_voters.add(ev.user_id)
    weights = []
    for user_id, recent in votes.items():  # every voter, not only new votes: a redelivery repairs a lost update
        weight, reason = anomaly_weight(recent, cfg)
        weights.append((user_id, weight, reason))
        if reason and user_id in new_voters:
            log.info("user %s weighted %.2f: %s", user_id, weight, reason)
    ledger.commit_batch(done, errors, weights, now)
    if late:
        log.info("%d late signal(s) on final replies: recorded, rewards unchanged", late)
    for stream_id, msg in errors.items():
        log.warning("event %s (%s) failed: %s", stream_id, dict(entries).get(stream_id, {}).get("kind"), msg)
    result.acked += len(done)
    result.failed += len(errors)
    result.errors += list(errors.values())


def process_one_by_one(ledger: RewardLedger, cfg: RewardConfig, entries: list[tuple[str, dict]],
                       result: BatchResult) -> None:
    """The slow path: each entry in its own ledger calls (handle_event)."""
    done = []
    now = time.time()
    for stream_id, fields in entries:
        try:
            handle_event(ledger, cfg, parse_event(stream_id, fields), now)
            done.append(stream_id)
        except (redis.ConnectionError, redis.TimeoutError):
            raise  # transient: the caller retries the whole batch
        except Exception as exc:  # isolate the entry: record why, keep it pending, go on
            msg = _error(exc)
            log.warning("event %s (%s) failed: %s", stream_id, fields.get("kind"), msg)
            ledger.note_error(stream_id, msg)
            result.failed += 1
            result.errors.append(msg)
    ledger.ack(done)
    result.acked += len(done)


def process_events(ledger: RewardLedger, cfg: RewardConfig, consumer: str, budget_s: float = 5.0) -> BatchResult:
    """Read new events in batches until none are left or the time budget is spent; then
    finalize what became due, so a zero wait window gives a final reward within one run."""
    result = BatchResult()
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline:
        entries = ledger.read_new(consumer, BATCH)
        if not entries:
            break
        process_entries(ledger, cfg, entries, result)
    if result.acked:
        result.finalized = finalize_due(ledger, cfg, time.time())
    return result


# --- ledger -> final rewards --------------------------------------------------------------------
def _regenerate_pair(entry: dict, signals: list[dict], vetoed: bool) -> dict | None:
    """A regeneration the user then kept: (chosen = this reply, rejected = the one it replaced);
    never with a vetoed (unsafe) reply as the chosen side, and not twice: a sibling event that
    preferred this reply to the one it replaced already wrote that pair."""
    if any(s.get("kind") == "sibling" and s.get("value") == "preferred"
           and (s.get("extra") or {}).get("other") == entry.get("replaces") for s in signals):
        return None
    if entry.get("replaces") and is_kept(signals) and not vetoed:
        return {"chosen_id": entry["reply_id"], "rejected_id": entry["replaces"], "source": "regenerate",
                "user_id": entry.get("user_id", ""), "session_id": entry.get("session_id", "")}
    return None


def user_weight(user: dict, cfg: RewardConfig) -> tuple[float, str, str]:
    """(weight, anomaly reason, unsafe-voter reason): the lower of the anomaly weight (set as votes
    arrive) and the unsafe-voter weight (from the user's recent positively-signalled replies)."""
    anomaly = float(user.get("anomaly_weight") or 1.0)
    voter, why = unsafe_voter_weight(user.get("_positives") or [], cfg)
    return min(anomaly, voter), user.get("anomaly_reason", ""), why or ""


def positive_flag(b: RewardBreakdown, cfg: RewardConfig) -> int | None:
    """For the unsafe-voter weight: None when the user gave no positive signal on the reply,
    else 1 if the reply was unsafe (level >= safety_threshold), 0 if not."""
    if not any(v > 0 for k, v in b.components.items() if k in USER_COMPONENTS):
        return None
    return int(b.unsafe is not None and b.unsafe >= cfg.safety_threshold)


def final_fields(cfg: RewardConfig, reply_id: str, entry: dict, reply: dict, signals: list[dict], user: dict,
                 *, now: float, chash: str | None = None) -> tuple[str, int, dict, dict, dict | None]:
    """The arguments of ledger.finalize for one pending reply (pure). chash: config_hash(cfg),
    computed once per batch by the caller."""
    weight, anomaly_reason, voter_reason = user_weight(user, cfg)
    breakdown = compute_reward(reply_facts(reply), signals, cfg, user_weight=weight)
    state, reward = finalize_state(breakdown.has_signal, cfg, breakdown.total)
    chash = chash or config_hash(cfg)
    ledger_fields = {
        "state": state, "reward": "" if reward is None else repr(reward), "total": repr(breakdown.total),
        "raw_sum": repr(breakdown.raw_sum), "has_signal": int(breakdown.has_signal),
        "components": json.dumps(breakdown.components), "explain": json.dumps(breakdown.explain()),
        "notes": json.dumps(list(breakdown.notes)), "config_hash": chash, "user_weight": repr(weight),
        "anomaly_reason": anomaly_reason, "unsafe_voter_reason": voter_reason, "n_signals": len(signals),
        "finalized_at": repr(now), "vetoed": int(breakdown.vetoed), "veto": breakdown.veto or "",
    }
    if breakdown.unsafe is not None:
        ledger_fields["unsafe"] = repr(breakdown.unsafe)
    if (flag := positive_flag(breakdown, cfg)) is not None:
        ledger_fields["positive"] = flag
    stream_fields = {
        "reply_id": reply_id, "user_id": entry.get("user_id", ""), "session_id": entry.get("session_id", ""),
        "adapter_version": entry.get("adapter_version", ""), "state": state,
        "reward": "" if reward is None else repr(reward), "config_hash": chash, "user_weight": repr(weight),
        "opt_out": entry.get("opt_out", "0"), "finalized_at": repr(now),
        # which components fired: lets the drift monitor follow per-reply signal rates
        "components": ",".join(sorted(breakdown.components)),
        "vetoed": int(breakdown.vetoed),   # never a positive example (learner/dataset.py)
    }
    return reply_id, len(signals), ledger_fields, stream_fields, _regenerate_pair(entry, signals, breakdown.vetoed)


def note_positives(ledger: RewardLedger, cfg: RewardConfig, finalized: list[tuple[dict, dict]], now: float) -> None:
    """After rewards became final: record which of them the user signalled positively and whether
    they were unsafe, and update those users' unsafe-voter weights (for their next rewards)."""
    flags = [(e.get("user_id", ""), lf["positive"]) for e, lf in finalized
             if e.get("user_id") and lf.get("positive") is not None]
    if not flags:
        return
    weights = []
    for user_id, recent in ledger.note_positives(flags).items():
        weight, reason = unsafe_voter_weight(recent, cfg)
        weights.append((user_id, weight, reason))
        if reason:
            log.info("user %s weighted %.2f: %s", user_id, weight, reason)
    ledger.set_unsafe_voter(weights, now)


def finalize_one(ledger: RewardLedger, cfg: RewardConfig, reply_id: str, now: float) -> bool:
    """Compute and write the final reward of one due reply; True if this call finalized it."""
    for _ in range(FINALIZE_RETRIES):
        entry, reply, signals, user = ledger.finalize_inputs(reply_id)
        if not entry or entry.get("state") != "pending":
            return False
        args = final_fields(cfg, reply_id, entry, reply, signals, user, now=now)
        done = ledger.finalize(*args)
        if done != Finalized.SIGNALS_CHANGED:
            if done == Finalized.FINALIZED:
                note_positives(ledger, cfg, [(entry, args[2])], now)
                log.debug("reward %s: %s %s (%d signals)", reply_id, args[2]["state"], args[2]["reward"] or "-", args[1])
            return done == Finalized.FINALIZED
    log.warning("reward %s: signals kept changing during %d attempts; will retry next run", reply_id,
                FINALIZE_RETRIES)
    return False


def finalize_due(ledger: RewardLedger, cfg: RewardConfig, now: float, limit: int = 500) -> int:
    """Finalize up to `limit` due replies: claimed with a lease (so concurrent workers split the
    work instead of computing it twice), read in two round trips, written in one; a reply whose
    signals changed meanwhile is redone alone. One whose worker dies is due again after the lease."""
    ids = ledger.claim_due(now, limit, FINALIZE_LEASE_S)
    if not ids:
        return 0
    items, entries, gone, chash = [], [], [], config_hash(cfg)
    for rid, (entry, reply, signals, user) in zip(ids, ledger.finalize_inputs_many(ids)):
        if entry.get("state") != "pending":
            gone.append(rid)
        else:
            items.append(final_fields(cfg, rid, entry, reply, signals, user, now=now, chash=chash))
            entries.append(entry)
    ledger.drop_due(gone)
    finalized, done_now = 0, []
    for entry, args, done in zip(entries, items, ledger.finalize_many(items)):
        if done == Finalized.FINALIZED:
            done_now.append((entry, args[2]))
        finalized += done == Finalized.FINALIZED or (done == Finalized.SIGNALS_CHANGED
                                                     and finalize_one(ledger, cfg, args[0], now))
    note_positives(ledger, cfg, done_now, now)
    log.debug("finalized %d of %d due reward(s)", finalized, len(ids))
    return finalized


# --- abandoned sessions ------------------------------------------------------------------------
ABANDON_LOOKBACK_S = 7 * 24 * 3600  # as long as the idempotency records of derived events live


def derive_abandonment(ledger: RewardLedger, idle_s: float, now: float) -> int:
    """One `abandon` event for the last reply of each session idle longer than idle_s whose
    user did nothing with that reply (written once ever per reply)."""
    written = 0
    for sid in ledger.recent_sessions(now - ABANDON_LOOKBACK_S):
        last_active, user_id, last_reply = ledger.session_tail(sid)
        if last_active is None or last_reply is None or now - last_active < idle_s:
            continue
        if ledger.abandon_recorded(last_reply):
            continue
        if any(s["kind"] in ACTION_KINDS for s in ledger.signals(last_reply)):
            continue
        version = ledger.reply(last_reply).get("adapter_version", "")
        fields = {"event_id": "ev_" + secrets.token_hex(10), "kind": "abandon", "reply_id": last_reply,
                  "session_id": sid, "user_id": user_id or "", "adapter_version": version,
                  "value": round(now - last_active, 3), "server_time": repr(now), "derived": 1}
        if ledger.record_abandon(last_reply, fields):
            written += 1
            log.info("session %s idle %.0f s: abandon event for reply %s", sid, now - last_active, last_reply)
    return written


# --- stale pending entries ---------------------------------------------------------------------
def reclaim_stale(ledger: RewardLedger, cfg: RewardConfig, consumer: str, idle_s: float,
                  max_deliveries: int) -> BatchResult:
    """Dead-letter entries delivered max_deliveries times; take over and process the other
    entries left pending longer than idle_s (a dead worker's, or ones that failed)."""
    result = BatchResult()
    idle_ms = int(idle_s * 1000)
    for entry in ledger.stale_pending(idle_ms, BATCH):
        if entry.deliveries >= max_deliveries:
            if ledger.dead_letter(entry, f"not acked after {entry.deliveries} deliveries"):
                log.error("event %s dead-lettered after %d deliveries", entry.stream_id, entry.deliveries)
    ledger.prune_consumers(CONSUMER_FORGET_S * 1000)
    entries = ledger.autoclaim(consumer, idle_ms, BATCH)
    if entries:
        log.info("reclaimed %d stale event(s)", len(entries))
        process_entries(ledger, cfg, entries, result)
        if result.acked:
            result.finalized = finalize_due(ledger, cfg, time.time())
    return result
