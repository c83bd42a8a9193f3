-- measure: a queue's figures in one O(1) call (the operator polls this every few seconds).
--
-- KEYS[1] waiting   LIST  LLEN = ready backlog; LINDEX -1 = the next token to run (oldest)
-- KEYS[2] inflight  ZSET  ZCARD = leased messages
-- KEYS[3] delayed   ZSET  ZCARD = delayed and retrying messages
-- KEYS[4] dead      ZSET  ZCARD = dead letters
-- KEYS[5] stats     HASH  counters
-- KEYS[6] paused    STRING present while the queue is paused
-- KEYS[7] stale     SET   tokens in waiting of messages already leased by priority: not
--                         counted as waiting (a KEDA scaler reading LLEN counts them until a
--                         fetch drops them)
-- KEYS[8] config    HASH  the queue's defaults: its "rate_limit" is reported (the autoscaler
--                         adds no replica a limit would leave idle)
-- ARGV[1] horizon (ms): delayed messages due within it are counted as "due soon" (ZCOUNT, log n)
-- Returns { now_ms, waiting, inflight, delayed, dead, oldest token or false,
--           enqueued, completed, retried, dead_total, recovered, due_soon, paused (0/1),
--           cancelled, rate_limit or false }.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local out = {
  now,
  redis.call('LLEN', KEYS[1]) - (KEYS[7] and redis.call('SCARD', KEYS[7]) or 0),
  redis.call('ZCARD', KEYS[2]),
  redis.call('ZCARD', KEYS[3]),
  redis.call('ZCARD', KEYS[4]),
  redis.call('LINDEX', KEYS[1], -1),
}
local counters = redis.call('HMGET', KEYS[5], 'enqueued', 'completed', 'retried', 'dead', 'recovered', 'cancelled')
for i = 1, 5 do out[#out + 1] = tonumber(counters[i]) or 0 end
out[#out + 1] = redis.call('ZCOUNT', KEYS[3], '-inf', now + tonumber(ARGV[1] or 0))
out[#out + 1] = KEYS[6] and redis.call('EXISTS', KEYS[6]) or 0
out[#out + 1] = tonumber(counters[6]) or 0
out[#out + 1] = KEYS[8] and redis.call('HGET', KEYS[8], 'rate_limit') or false
return out
