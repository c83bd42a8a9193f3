-- renew: extend the leases of messages a live worker is still running (its heartbeat).
--
-- KEYS[1] inflight    ZSET  id -> lease deadline (ms); only ids still present are updated (XX),
--                           so a message finished or recovered elsewhere is never resurrected
-- KEYS[2] deliveries  HASH  id -> delivery count: the lease belongs to the worker holding the
--                           latest delivery; a worker whose lease lapsed and was re-delivered
--                           renews nothing
-- ARGV[1] lease length (ms)
-- ARGV[2..] pairs: id, the delivery this worker holds
local t = redis.call('TIME')
local deadline = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[1])
local renewed = 0
for i = 2, #ARGV, 2 do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[i + 1] then
    renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', deadline, ARGV[i])
  end
end
return renewed
