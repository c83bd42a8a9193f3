-- ack: finish messages that ran to completion; optionally store their results.
--
-- KEYS[1] inflight    ZSET  id -> lease deadline; the ids are removed
-- KEYS[2] messages    HASH  id -> envelope; the ids are removed
-- KEYS[3] stats       HASH  counters; "completed" counts messages removed here
-- KEYS[4] deliveries  HASH  id -> delivery count; the ids are removed
-- KEYS[5] dedupe      HASH  dedupe key -> id; released when held by the finished id
-- KEYS[6..] result keys (LIST, one entry) of the messages that carry a result, in ARGV order
-- ARGV[1] result TTL (ms)
-- ARGV[2..] triples: id, result JSON ("" = none), dedupe key ("" = none)
-- A message acked twice (its lease expired and another worker ran it too) counts once.
local ttl = tonumber(ARGV[1])
local done = 0
local k = 6
for i = 2, #ARGV, 3 do
  local id, result, dedupe = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  redis.call('ZREM', KEYS[1], id)
  done = done + redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[4], id)
  if dedupe ~= '' and redis.call('HGET', KEYS[5], dedupe) == id then
    redis.call('HDEL', KEYS[5], dedupe)
  end
  if result ~= '' then
    redis.call('DEL', KEYS[k])
    redis.call('RPUSH', KEYS[k], result)
    redis.call('PEXPIRE', KEYS[k], ttl)
    k = k + 1
  end
end
if done > 0 then redis.call('HINCRBY', KEYS[3], 'completed', done) end
return done
