-- throttle: may a leased message of a rate-limited task start now? (``@app.task(rate_limit=)``)
-- A GCRA clock per task: starts are spaced by the interval across every worker. A message that
-- may not start yet is put back as delayed until the slot reserved for it, so it waits in
-- Redis and never holds a worker slot; when it is leased again, its reservation lets it start.
--
-- KEYS[1] rate        HASH  clock name -> theoretical arrival time of the next start (ms),
--                           as immediate starts left it
-- KEYS[2] reserved    ZSET  this task's reservations: id -> the start slot reserved for it
--                           (ms). The latest live one is where the clock stands; one whose
--                           message is gone (cancelled, purged, expired) is dropped when seen
-- KEYS[3] inflight    ZSET  id -> lease deadline; the id is removed when it is put back
-- KEYS[4] delayed     ZSET  id -> due time; the id is added, due at its slot
-- KEYS[5] owners      HASH  id -> owner token: only the lease's owner may decide
-- KEYS[6] deliveries  HASH  id -> delivery count; decremented: a put-back is not a lost delivery
-- KEYS[7] stats       HASH  counters; "throttled" counts the messages put back
-- KEYS[8] messages    HASH  id -> envelope: a reservation lives while its message does
-- ARGV[1] clock name ("task:<name>"), ARGV[2] interval (ms), ARGV[3] id, ARGV[4] owner token,
-- ARGV[5] window (ms): a start may be taken this much before its slot (fewer round trips)
-- Returns 0 (start it now), the slot it was put back for (ms), or -1 (the lease is not the
-- caller's any more: it changes nothing).
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local clock, interval, id = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local window = tonumber(ARGV[5])
if redis.call('HGET', KEYS[5], id) ~= ARGV[4] then return -1 end
local stored = tonumber(redis.call('HGET', KEYS[1], clock)) or 0
local slot = tonumber(redis.call('ZSCORE', KEYS[2], id))
if slot then  -- its reserved start has come
  redis.call('ZREM', KEYS[2], id)
  if slot + interval > stored then redis.call('HSET', KEYS[1], clock, slot + interval) end
  return 0
end
local latest
for _ = 1, 100 do
  local top = redis.call('ZREVRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  if #top == 0 then break end
  if redis.call('HEXISTS', KEYS[8], top[1]) == 1 then
    latest = tonumber(top[2])
    break
  end
  redis.call('ZREM', KEYS[2], top[1])
end
-- An immediate start moves the clock one interval at most past the window: a clock further
-- ahead is stale (the limit was raised), and waits one new interval, not the old one.
local tat = math.min(stored, now + window + interval)
if latest and latest + interval > tat then tat = latest + interval end
if tat < now then tat = now end
if tat <= now + window then
  redis.call('HSET', KEYS[1], clock, tat + interval)
  return 0
end
slot = math.floor(tat)
redis.call('ZREM', KEYS[3], id)
redis.call('HDEL', KEYS[5], id)
redis.call('ZADD', KEYS[4], slot, id)
redis.call('ZADD', KEYS[2], slot, id)
redis.call('HINCRBY', KEYS[6], id, -1)
redis.call('HINCRBY', KEYS[7], 'throttled', 1)
return slot
