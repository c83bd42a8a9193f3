-- cancel: a message must not run (any more). One that waits or is delayed is removed at once
-- and finished as cancelled; for one that runs, the cancel is recorded for its worker, which
-- reads it when it next renews the lease (renew.lua) and stops the task.
--
-- KEYS[1] messages    HASH  id -> envelope; removed when the message is not running
-- KEYS[2] inflight    ZSET  id -> lease deadline: the message runs when it is here
-- KEYS[3] delayed     ZSET  id -> due time; removed
-- KEYS[4] stats       HASH  counters; "cancelled" counts the messages removed here
-- KEYS[5] deliveries  HASH  id -> delivery count; removed
-- KEYS[6] cancels     ZSET  id -> when the cancel was asked (ms); entries older than the
--                           result TTL are pruned here (their messages finished long ago)
-- KEYS[7] result      LIST  the message's result: the cancelled outcome is stored there
-- ARGV[1] id, ARGV[2] the cancelled result JSON, ARGV[3] result TTL (ms)
-- Returns "waiting" or "delayed" (cancelled now), "running" (its worker will stop it), or
-- "gone" (finished, dead-lettered or never stored: nothing to cancel).
-- A waiting message's token stays in the waiting list until a fetch drops it (its message is
-- gone), so LLEN may count it until then: finding it would be a scan.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local id, ttl = ARGV[1], tonumber(ARGV[3])
if redis.call('HEXISTS', KEYS[1], id) == 0 then return 'gone' end
if redis.call('ZSCORE', KEYS[2], id) then
  redis.call('ZADD', KEYS[6], now, id)
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now - ttl)
  return 'running'
end
local was = redis.call('ZREM', KEYS[3], id) == 1 and 'delayed' or 'waiting'
redis.call('HDEL', KEYS[1], id)
redis.call('HDEL', KEYS[5], id)
redis.call('DEL', KEYS[7])
redis.call('RPUSH', KEYS[7], ARGV[2])
redis.call('PEXPIRE', KEYS[7], ttl)
redis.call('HINCRBY', KEYS[4], 'cancelled', 1)
return was
