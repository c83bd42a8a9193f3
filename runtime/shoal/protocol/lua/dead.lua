-- dead: move a message to the dead-letter queue with its entry, and keep the DLQ bounded.
--
-- KEYS[1] inflight      ZSET  id -> lease deadline; the id is removed
-- KEYS[2] messages      HASH  id -> envelope; the id is removed
-- KEYS[3] dead          ZSET  DLQ id -> dead-lettered at (ms)
-- KEYS[4] dead:entries  HASH  DLQ id -> entry JSON (reason, error, body size, ...; bounded)
-- KEYS[5] stats         HASH  counters; "dead" is incremented
-- KEYS[6] deliveries    HASH  id -> delivery count; the id is removed
-- KEYS[7] dedupe        HASH  dedupe key -> id; released when held by this id
-- KEYS[8] result key    LIST  the failure is stored there when ARGV[4] is not ""
-- KEYS[9] owners        HASH  id -> owner token of the current lease; checked, then removed
-- KEYS[10] dead:bodies  HASH  DLQ id -> the message's envelope, or an excerpt of bad bytes
--                             (written, and trimmed, with its entry)
-- ARGV[1] id (the key the message is stored under), ARGV[2] entry JSON, ARGV[3] max entries,
-- ARGV[4] result JSON or "", ARGV[5] result TTL (ms), ARGV[6] max age (ms),
-- ARGV[7] dedupe key or "",
-- ARGV[8] the caller's owner token of a stored message, or "" for a malformed waiting token
-- (then no message state is touched: the token's text may even name another, live message).
-- A message finished or re-delivered elsewhere meanwhile is left alone (a task that succeeded
-- on another worker must not land in the DLQ); returns 0 then. A dead-letter resent after its
-- reply was lost finds the message gone and its entry filed: 1, nothing changes.
-- ARGV[9] the id to file the entry under ("" = ARGV[1]): a key that is not readable text, or a
-- malformed token, is filed under a readable id of its own.
-- ARGV[10] the body stored in dead:bodies
-- Trimming pops the oldest entries by score: O(log n) per entry, never a scan.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local bodies, body = KEYS[10], ARGV[10]
local id = ARGV[1]
local dlq_id = ARGV[9] ~= '' and ARGV[9] or id
if ARGV[8] ~= '' then
  if redis.call('HGET', KEYS[9], id) ~= ARGV[8] then
    if redis.call('HEXISTS', KEYS[2], id) == 0 and redis.call('ZSCORE', KEYS[3], dlq_id) then
      return 1
    end
    return 0
  end
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[6], id)
  redis.call('HDEL', KEYS[9], id)
  if ARGV[7] ~= '' and redis.call('HGET', KEYS[7], ARGV[7]) == id then
    redis.call('HDEL', KEYS[7], ARGV[7])
  end
end
redis.call('ZADD', KEYS[3], now, dlq_id)
redis.call('HSET', KEYS[4], dlq_id, ARGV[2])
redis.call('HSET', bodies, dlq_id, body)
redis.call('HINCRBY', KEYS[5], 'dead', 1)
if ARGV[4] ~= '' then
  redis.call('DEL', KEYS[8])
  redis.call('RPUSH', KEYS[8], ARGV[4])
  redis.call('PEXPIRE', KEYS[8], tonumber(ARGV[5]))
end
local excess = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[3])
if excess > 0 then
  local popped = redis.call('ZPOPMIN', KEYS[3], excess)
  for i = 1, #popped, 2 do
    redis.call('HDEL', KEYS[4], popped[i])
    redis.call('HDEL', bodies, popped[i])
  end
end
local stale = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[6]), 'LIMIT', 0, 100)
for _, old in ipairs(stale) do
  redis.call('ZREM', KEYS[3], old)
  redis.call('HDEL', KEYS[4], old)
  redis.call('HDEL', bodies, old)
end
return 1
