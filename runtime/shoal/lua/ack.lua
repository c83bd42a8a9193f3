-- ack: finish messages that ran to completion; optionally store their results.
--
-- KEYS[1] inflight  ZSET  id -> lease deadline; the ids are removed
-- KEYS[2] messages  HASH  id -> envelope JSON; the ids are removed
-- KEYS[3] stats     HASH  counters; "completed" counts messages removed here
-- KEYS[4..] result keys (LIST, one entry) of the messages that carry a result, in ARGV order
-- ARGV[1] result TTL (ms)
-- ARGV[2..] pairs: id, result JSON ("" = no result to store)
-- A message acked twice (its lease expired and another worker ran it too) counts once.
local ttl = tonumber(ARGV[1])
local done = 0
local k = 4
for i = 2, #ARGV, 2 do
  local id, result = ARGV[i], ARGV[i + 1]
  redis.call('ZREM', KEYS[1], id)
  done = done + redis.call('HDEL', KEYS[2], id)
  if result ~= '' then
    redis.call('DEL', KEYS[k])
    redis.call('RPUSH', KEYS[k], result)
    redis.call('PEXPIRE', KEYS[k], ttl)
    k = k + 1
  end
end
if done > 0 then redis.call('HINCRBY', KEYS[3], 'completed', done) end
return done
