"""Lua scripts of the reward ledger. Each one is a single atomic step, which is what makes
processing an event twice (a redelivery, a second worker) change nothing. Pure strings, and
the codes they return as IntEnums (compare with these, never with bare numbers)."""
from enum import IntEnum


class Opened(IntEnum):
    """What ensure_entry (ENSURE_ENTRY, and the first code of each APPLY_BATCH event) returns."""
    NO_SUCH_REPLY = -1
    EXISTED = 0
    CREATED = 1


class Applied(IntEnum):
    """What apply_signal (APPLY_SIGNAL, and each signal's code in APPLY_BATCH) returns."""
    DUPLICATE = 0
    RECORDED = 1
    LATE = 2        # recorded, but the reply was already final: the reward does not change


class Finalized(IntEnum):
    """What finalize (FINALIZE, FINALIZE_MANY per item) returns."""
    SIGNALS_CHANGED = -1   # a signal arrived since the reward was computed: recompute
    ALREADY_FINAL = 0
    FINALIZED = 1


# Open the ledger entry of a reply (once), from its reply hash.
# (reward hash, pending zset, reply hash, reply_id, wait_window_s, now) -> 1 created, 0 existed, -1 no such reply
_ENSURE_FN = """
local function ensure_entry(k_reward, k_pending, k_reply, reply_id, window, now)
  if redis.call('EXISTS', k_reward) == 1 then return 0 end
  local r = redis.call('HMGET', k_reply, 'user_id', 'session_id', 'adapter_version', 'ended_at', 'replaces', 'opt_out')
  if not r[1] then return -1 end
  local ended = tonumber(r[4]) or tonumber(now)
  local due = ended + tonumber(window)
  redis.call('HSET', k_reward, 'state', 'pending', 'reply_id', reply_id, 'user_id', r[1], 'session_id', r[2] or '',
    'adapter_version', r[3] or '', 'ended_at', tostring(ended), 'due_at', tostring(due), 'opened_at', now,
    'replaces', r[5] or '', 'opt_out', r[6] or '0', 'late_signals', 0)
  redis.call('ZADD', k_pending, due, reply_id)
  return 1
end
"""
# KEYS: reward hash, pending zset, reply hash   ARGV: reply_id, wait_window_s, now
ENSURE_ENTRY = _ENSURE_FN + "return ensure_entry(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3])"

# Record one signal of one reply, once per event id; a signal for a final reply is late.
# (signals hash, reward hash, pairs stream, user votes list, stats hash, event_id, signal json,
#  pair json ('' = none), vote json ('' = none))
# -> 0 duplicate, 1 recorded, 2 recorded as late (the entry gets late=1, late_signals+1)
_APPLY_FN = """
local function apply_signal(k_signals, k_reward, k_pairs, k_votes, k_stats, event_id, signal, pair, vote)
  if redis.call('HSETNX', k_signals, event_id, signal) == 0 then return 0 end
  local result = 1
  local state = redis.call('HGET', k_reward, 'state')
  if state and state ~= 'pending' then
    redis.call('HINCRBY', k_reward, 'late_signals', 1)
    redis.call('HSET', k_reward, 'late', 1)
    redis.call('HINCRBY', k_stats, 'late_signals', 1)
    result = 2
  end
  if pair ~= '' then redis.call('XADD', k_pairs, '*', unpack(cjson.decode(pair))) end
  if vote ~= '' then
    redis.call('LPUSH', k_votes, vote)
    redis.call('LTRIM', k_votes, 0, 49)
  end
  redis.call('HINCRBY', k_stats, 'signals', 1)
  return result
end
"""
# KEYS: signals hash, reward hash, pairs stream, user votes list, stats hash
# ARGV: event_id, signal json, pair json ('' = none), vote json ('' = none)
APPLY_SIGNAL = _APPLY_FN + "return apply_signal(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3], " \
    "ARGV[4])"

# A whole batch of events in one atomic step: the same two functions, event by event, in
# stream order, plus the session end of `abandon` events; then the recent votes of the users
# who voted in the batch (for the anomaly weight, computed in Python). One call instead of
# two or three round trips per event is what lets one worker keep up with a server's intake.
# KEYS: pending zset, pairs stream, stats hash, then every per-reply/user/session key, referenced
#       below by index.
# ARGV: wait_window_s, now, JSON [[signal ops...], end-session op or 0] per event, JSON [votes key index...]
#   signal op: [reply_id, i_reward, i_reply, i_signals, i_votes, event_id, signal, pair, vote]
#              (event_id '' = open the entry only: a `reply` event)
#   end-session op: i_session_replies
# -> [[per event: 1 then each signal's result, or -1 and the missing reply id], [votes list per index]]
APPLY_BATCH = _ENSURE_FN + _APPLY_FN + """
local window, now = ARGV[1], ARGV[2]
local events, vote_keys = cjson.decode(ARGV[3]), cjson.decode(ARGV[4])
local results, votes = {}, {}
for i, ev in ipairs(events) do
  local res = {1}
  for _, op in ipairs(ev[1]) do
    if ensure_entry(KEYS[op[2]], KEYS[1], KEYS[op[3]], op[1], window, now) < 0 then
      res = {-1, op[1]}
      break
    end
    if op[6] ~= '' then
      res[#res + 1] = apply_signal(KEYS[op[4]], KEYS[op[2]], KEYS[2], KEYS[op[5]], KEYS[3], op[6], op[7], op[8], op[9])
    end
  end
  if res[1] == 1 and ev[2] ~= 0 then
    -- the session ended: every pending reply of it is due now (XX: only pending ones; LT: never later)
    for _, rid in ipairs(redis.call('LRANGE', KEYS[ev[2]], 0, -1)) do
      redis.call('ZADD', KEYS[1], 'XX', 'LT', now, rid)
    end
  end
  results[i] = res
end
for i, k in ipairs(vote_keys) do votes[i] = redis.call('LRANGE', KEYS[k], 0, 49) end
return {results, votes}
"""

# Take up to N due replies for finalization: each gets a lease (its score moves to now + lease)
# so other workers skip it; FINALIZE removes it, and one whose worker died is due again when the
# lease ends. KEYS: pending zset   ARGV: now, limit, lease end -> reply ids
CLAIM_DUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[3], id) end
return ids
"""

# Make a reply final, once, and only if no signal arrived since its reward was computed.
# (reward hash, pending zset, signals hash, rewards stream, pairs stream, stats hash, reply_id,
#  signals seen, ledger fields, rewards stream fields, pair fields or false; fields: flat tables)
# -> 1 finalized, 0 already final, -1 signals changed (recompute)
_FINALIZE_FN = """
local function finalize(k_reward, k_pending, k_signals, k_rewards, k_pairs, k_stats, reply_id, n_signals,
                        ledger_fields, stream_fields, pair)
  local state = redis.call('HGET', k_reward, 'state')
  if state ~= 'pending' then
    redis.call('ZREM', k_pending, reply_id)
    return 0
  end
  if redis.call('HLEN', k_signals) ~= tonumber(n_signals) then return -1 end
  redis.call('HSET', k_reward, unpack(ledger_fields))
  redis.call('ZREM', k_pending, reply_id)
  redis.call('XADD', k_rewards, '*', unpack(stream_fields))
  if pair then redis.call('XADD', k_pairs, '*', unpack(pair)) end
  redis.call('HINCRBY', k_stats, 'finalized:' .. redis.call('HGET', k_reward, 'state'), 1)
  return 1
end
"""
# KEYS: reward hash, pending zset, signals hash, rewards stream, pairs stream, stats hash
# ARGV: reply_id, signals seen, ledger fields json, rewards stream fields json, pair json ('' = none)
FINALIZE = _FINALIZE_FN + """
local pair = false
if ARGV[5] ~= '' then pair = cjson.decode(ARGV[5]) end
return finalize(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[1], ARGV[2], cjson.decode(ARGV[3]),
  cjson.decode(ARGV[4]), pair)
"""

# FINALIZE for a batch of replies in one call (each one independent of the others).
# KEYS: pending zset, rewards stream, pairs stream, stats hash, then reward hash and signals hash
#       of each reply   ARGV: JSON [[reply_id, signals seen, ledger fields, stream fields, pair or 0]...]
# -> the result of each
FINALIZE_MANY = _FINALIZE_FN + """
local out = {}
for i, it in ipairs(cjson.decode(ARGV[1])) do
  local pair = false
  if it[5] ~= 0 then pair = it[5] end
  out[i] = finalize(KEYS[3 + 2 * i], KEYS[1], KEYS[4 + 2 * i], KEYS[2], KEYS[3], KEYS[4], it[1], it[2], it[3], it[4],
    pair)
end
return out
"""

# Move an event that keeps failing to the dead letters and ack it, in one step.
# KEYS: events stream, dead letters stream, errors hash, stats hash
# ARGV: group, stream id, dead-letter fields json
DEAD_LETTER = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', unpack(cjson.decode(ARGV[3])))
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('HINCRBY', KEYS[4], 'dead_letters', 1)
return 1
"""

# Beat leadership: take the lock if free, renew it if ours. KEYS: lock   ARGV: token, ttl_ms
ACQUIRE_OR_RENEW = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""

# Forget a consumer only if it holds nothing pending (deleting one with pending entries would
# drop them from the group). KEYS: events stream   ARGV: group, consumer
FORGET_CONSUMER = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
