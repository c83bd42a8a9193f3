-- renew: extend the leases of messages a live worker is still running (its heartbeat).
--
-- KEYS[1] inflight  ZSET  id -> lease deadline (ms); only ids still present are updated (XX),
--                         so a message finished or recovered elsewhere is never resurrected
-- KEYS[2] owners    HASH  id -> owner token of the current lease; a worker whose lease lapsed
--                         (recovered, or re-delivered to another worker) renews nothing
-- KEYS[3] cancels   ZSET  id -> when a cancel was asked; read, not changed
-- ARGV[1] lease length (ms)
-- ARGV[2..] pairs: id, the owner token this worker holds
-- Returns { ids this worker no longer owns (it must stop running them and never ack them),
--           ids it still owns whose cancel was asked (it must stop them, outcome cancelled) }.
local t = redis.call('TIME')
local deadline = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[1])
local lost, cancelled = {}, {}
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[2], id) == ARGV[i + 1] and redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZADD', KEYS[1], 'XX', deadline, id)
    if redis.call('ZSCORE', KEYS[3], id) then cancelled[#cancelled + 1] = id end
  else
    lost[#lost + 1] = id
  end
end
return { lost, cancelled }
