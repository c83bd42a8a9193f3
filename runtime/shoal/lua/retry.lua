-- retry: put a failed message back with its updated envelope, due after a delay.
--
-- KEYS[1] inflight  ZSET  id -> lease deadline; the id is removed
-- KEYS[2] messages  HASH  id -> envelope JSON; replaced by the new envelope (attempt + 1)
-- KEYS[3] delayed   ZSET  id -> due time (ms); the id is added
-- KEYS[4] stats     HASH  counters; "retried" is incremented
-- ARGV[1] id, ARGV[2] delay (ms), ARGV[3] new envelope JSON
-- Returns 1, or 0 when the message was already finished elsewhere (nothing changes).
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return 0 end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HINCRBY', KEYS[4], 'retried', 1)
return 1
