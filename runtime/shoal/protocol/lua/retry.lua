-- retry: put a failed message back with its updated envelope, due after a delay.
--
-- KEYS[1] inflight  ZSET  id -> lease deadline; the id is removed
-- KEYS[2] messages  HASH  id -> envelope JSON; replaced by the new envelope (attempt + 1)
-- KEYS[3] delayed   ZSET  id -> due time (ms); the id is added
-- KEYS[4] stats       HASH  counters; "retried" is incremented
-- KEYS[5] owners      HASH  id -> owner token of the current lease; checked, then removed
-- ARGV[1] id, ARGV[2] delay (ms), ARGV[3] new envelope JSON, ARGV[4] the caller's owner token
-- Returns 1, or 0 when the message was finished or re-delivered elsewhere (nothing changes:
-- a worker whose lease lapsed must not schedule a second copy of a message another one runs).
-- A retry resent after its reply was lost finds its own envelope delayed: 1, nothing changes.
if redis.call('HGET', KEYS[5], ARGV[1]) ~= ARGV[4] then
  if redis.call('ZSCORE', KEYS[3], ARGV[1]) and redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[3] then
    return 1
  end
  return 0
end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HINCRBY', KEYS[4], 'retried', 1)
return 1
