-- throttle: may a leased message of a rate-limited task start now? (``@app.task(rate_limit=)``)
-- A GCRA clock per task: starts are spaced by the interval across every worker. A message that
-- may not start yet is put back as delayed until the slot reserved for it, so it waits in
-- Redis and never holds a worker slot; when it is leased again, its reservation lets it start.
--
-- KEYS[1] rate        HASH  clock name -> theoretical arrival time of the next start (ms)
-- KEYS[2] reserved    HASH  id -> the start slot reserved for it (ms); used up when it starts
-- KEYS[3] inflight    ZSET  id -> lease deadline; the id is removed when it is put back
-- KEYS[4] delayed     ZSET  id -> due time; the id is added, due at its slot
-- KEYS[5] owners      HASH  id -> owner token: only the lease's owner may decide
-- KEYS[6] deliveries  HASH  id -> delivery count; decremented: a put-back is not a lost delivery
-- KEYS[7] stats       HASH  counters; "throttled" counts the messages put back
-- ARGV[1] clock name ("task:<name>"), ARGV[2] interval (ms), ARGV[3] id, ARGV[4] owner token,
-- ARGV[5] window (ms): a start may be taken this much before its slot (fewer round trips)
-- Returns 0 (start it now), the slot it was put back for (ms), or -1 (the lease is not the
-- caller's any more: it changes nothing).
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local id = ARGV[3]
if redis.call('HGET', KEYS[5], id) ~= ARGV[4] then return -1 end
if redis.call('HDEL', KEYS[2], id) == 1 then return 0 end
local interval = tonumber(ARGV[2])
local tat = math.max(tonumber(redis.call('HGET', KEYS[1], ARGV[1])) or 0, now)
redis.call('HSET', KEYS[1], ARGV[1], tat + interval)
if tat <= now + tonumber(ARGV[5]) then return 0 end
local slot = math.floor(tat)
redis.call('ZREM', KEYS[3], id)
redis.call('HDEL', KEYS[5], id)
redis.call('ZADD', KEYS[4], slot, id)
redis.call('HSET', KEYS[2], id, slot)
redis.call('HINCRBY', KEYS[6], id, -1)
redis.call('HINCRBY', KEYS[7], 'throttled', 1)
return slot
