-- enqueue: store messages and make them ready (or delayed), atomically.
--
-- KEYS[1] waiting   LIST  tokens "<ready_ms>:<id>" of ready messages (LPUSH here, RPOP at fetch)
-- KEYS[2] messages  HASH  id -> envelope JSON
-- KEYS[3] delayed   ZSET  id -> due time (ms)
-- KEYS[4] stats     HASH  counters; "enqueued" is incremented
-- ARGV[1] notify channel, published when waiting goes from empty to non-empty
-- ARGV[2..] triples: id, delay_ms (0 = ready now), envelope JSON
-- Returns the number of messages stored.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local was_empty = redis.call('LLEN', KEYS[1]) == 0
local pushed = 0
local n = 0
for i = 2, #ARGV, 3 do
  local id, delay = ARGV[i], tonumber(ARGV[i + 1])
  redis.call('HSET', KEYS[2], id, ARGV[i + 2])
  if delay > 0 then
    redis.call('ZADD', KEYS[3], now + delay, id)
  else
    redis.call('LPUSH', KEYS[1], now .. ':' .. id)
    pushed = pushed + 1
  end
  n = n + 1
end
redis.call('HINCRBY', KEYS[4], 'enqueued', n)
if was_empty and pushed > 0 then
  redis.call('PUBLISH', ARGV[1], pushed)
end
return n
