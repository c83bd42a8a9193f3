-- renew: extend the leases of messages a live worker is still running (its heartbeat).
--
-- KEYS[1] inflight  ZSET  id -> lease deadline (ms); only ids still present are updated (XX),
--                         so a message finished or recovered elsewhere is never resurrected
-- KEYS[2] owners    HASH  id -> owner token of the current lease; a worker whose lease lapsed
--                         (recovered, or re-delivered to another worker) renews nothing
-- ARGV[1] lease length (ms)
-- ARGV[2..] pairs: id, the owner token this worker holds
-- Returns the ids this worker no longer owns: it must stop running them and never ack them.
local t = redis.call('TIME')
local deadline = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[2], id) == ARGV[i + 1] and redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZADD', KEYS[1], 'XX', deadline, id)
  else
    lost[#lost + 1] = id
  end
end
return lost
