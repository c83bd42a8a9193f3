-- promote_due: not a script of its own. fetch.lua and promote.lua include it where they say
-- "--#include promote_due" (scripts.script_source pastes it in), so the one definition of
-- "what is due" is shared by a worker's fetch and by the operator's promoter.
--
-- Moves what is due into the waiting list, at most `limit` of each kind per call:
--   delayed ZSET entries due by `now` (delayed messages, retries after their backoff) are pushed
--   with their due time as ready time; leases in the inflight ZSET past their deadline (their
--   worker died or stopped renewing) lose their owner token, so that worker can no longer ack,
--   renew, retry or hand them back, and are pushed again (counted in stats "recovered"); a
--   lapsed lease whose message is gone (acked meanwhile) is only dropped.
-- Expects these locals of the including script: now (ms, Redis clock), limit, and the keys
-- waiting (LIST), messages (HASH), inflight (ZSET), delayed (ZSET), stats (HASH), owners (HASH).
-- Leaves: promoted (delayed entries moved), recovered (lapsed leases returned to waiting).
local promoted, recovered = 0, 0
local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
for i = 1, #due, 2 do
  redis.call('ZREM', delayed, due[i])
  redis.call('RPUSH', waiting, due[i + 1] .. ':' .. due[i])
  promoted = promoted + 1
end

local expired = redis.call('ZRANGEBYSCORE', inflight, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
for i = 1, #expired, 2 do
  redis.call('ZREM', inflight, expired[i])
  redis.call('HDEL', owners, expired[i])
  if redis.call('HEXISTS', messages, expired[i]) == 1 then
    redis.call('RPUSH', waiting, expired[i + 1] .. ':' .. expired[i])
    redis.call('HINCRBY', stats, 'recovered', 1)
    recovered = recovered + 1
  end
end
