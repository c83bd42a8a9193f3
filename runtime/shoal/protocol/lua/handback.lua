-- handback: return leased messages a stopping worker will not run, ahead of everything else.
--
-- KEYS[1] inflight    ZSET  id -> lease deadline; the ids are removed
-- KEYS[2] waiting     LIST  tokens; the ids are pushed at the fetch end, so they run next
-- KEYS[3] messages    HASH  id -> envelope; only ids still present are handed back
-- KEYS[4] deliveries  HASH  id -> delivery count; decremented: a handback is not a lost delivery
-- KEYS[5] owners      HASH  id -> owner token of the current lease; checked, then removed
-- ARGV[1] notify channel
-- ARGV[2..] pairs: id, the owner token this worker holds (only its own leases are handed back)
-- Returns the number of messages handed back.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local n = 0
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[5], id) == ARGV[i + 1] and redis.call('ZREM', KEYS[1], id) == 1
      and redis.call('HEXISTS', KEYS[3], id) == 1 then
    redis.call('HDEL', KEYS[5], id)
    redis.call('RPUSH', KEYS[2], now .. ':' .. id)
    redis.call('HINCRBY', KEYS[4], id, -1)
    n = n + 1
  end
end
if n > 0 then redis.call('PUBLISH', ARGV[1], n) end
return n
