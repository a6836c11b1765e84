"""Lua scripts of the reward ledger. Each one is a single atomic step, which is what makes
processing an event twice (a redelivery, a second worker) change nothing. Pure strings."""

# Open the ledger entry of a reply (once), from its reply hash.
# KEYS: reward hash, pending zset, reply hash   ARGV: reply_id, wait_window_s, now
# -> 1 created, 0 existed, -1 no such reply
ENSURE_ENTRY = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local r = redis.call('HMGET', KEYS[3], 'user_id', 'session_id', 'adapter_version', 'ended_at', 'replaces', 'opt_out')
if not r[1] then return -1 end
local ended = tonumber(r[4]) or tonumber(ARGV[3])
local due = ended + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'state', 'pending', 'reply_id', ARGV[1], 'user_id', r[1], 'session_id', r[2] or '',
  'adapter_version', r[3] or '', 'ended_at', tostring(ended), 'due_at', tostring(due), 'opened_at', ARGV[3],
  'replaces', r[5] or '', 'opt_out', r[6] or '0', 'late_signals', 0)
redis.call('ZADD', KEYS[2], due, ARGV[1])
return 1
"""

# Record one signal of one reply, once per event id; a signal for a final reply is late.
# KEYS: signals hash, reward hash, pairs stream, user votes list, stats hash
# ARGV: event_id, signal json, pair json ('' = none), vote json ('' = none)
# -> 0 duplicate, 1 recorded, 2 recorded as late (the entry gets late=1, late_signals+1)
APPLY_SIGNAL = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
local result = 1
local state = redis.call('HGET', KEYS[2], 'state')
if state and state ~= 'pending' then
  redis.call('HINCRBY', KEYS[2], 'late_signals', 1)
  redis.call('HSET', KEYS[2], 'late', 1)
  redis.call('HINCRBY', KEYS[5], 'late_signals', 1)
  result = 2
end
if ARGV[3] ~= '' then redis.call('XADD', KEYS[3], '*', unpack(cjson.decode(ARGV[3]))) end
if ARGV[4] ~= '' then
  redis.call('LPUSH', KEYS[4], ARGV[4])
  redis.call('LTRIM', KEYS[4], 0, 49)
end
redis.call('HINCRBY', KEYS[5], 'signals', 1)
return result
"""

# Make a reply final, once, and only if no signal arrived since its reward was computed.
# KEYS: reward hash, pending zset, signals hash, rewards stream, pairs stream, stats hash
# ARGV: reply_id, signals seen, ledger fields json, rewards stream fields json, pair json ('' = none)
# -> 1 finalized, 0 already final, -1 signals changed (recompute)
FINALIZE = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'pending' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
if redis.call('HLEN', KEYS[3]) ~= tonumber(ARGV[2]) then return -1 end
redis.call('HSET', KEYS[1], unpack(cjson.decode(ARGV[3])))
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('XADD', KEYS[4], '*', unpack(cjson.decode(ARGV[4])))
if ARGV[5] ~= '' then redis.call('XADD', KEYS[5], '*', unpack(cjson.decode(ARGV[5]))) end
redis.call('HINCRBY', KEYS[6], 'finalized:' .. redis.call('HGET', KEYS[1], 'state'), 1)
return 1
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
