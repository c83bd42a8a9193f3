-- renew: extend the leases of messages a live worker is still running (its heartbeat).
--
-- KEYS[1] inflight  ZSET  id -> lease deadline (ms); only ids still present are updated (XX),
--                         so a message finished or recovered elsewhere is never resurrected
-- ARGV[1] lease length (ms)
-- ARGV[2..] ids
local t = redis.call('TIME')
local deadline = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', deadline, ARGV[i])
end
return #ARGV - 1
