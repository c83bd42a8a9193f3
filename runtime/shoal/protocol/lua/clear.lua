-- clear: delete a batch of the messages a queue holds waiting or delayed (``shoal queue
-- purge``); running messages and dead letters are left alone. The caller repeats until a call
-- pops nothing, so no single call blocks Redis on a huge backlog.
--
-- KEYS[1] waiting     LIST  tokens "<ready_ms>:<id>"; popped from the fetch end
-- KEYS[2] messages    HASH  id -> envelope; removed
-- KEYS[3] delayed     ZSET  id -> due time; popped
-- KEYS[4] stats       HASH  counters; "purged" counts the messages removed
-- KEYS[5] deliveries  HASH  id -> delivery count; removed
-- KEYS[6] inflight    ZSET  a running message is left alone (its token may be a stale one)
-- KEYS[7] ready       ZSET  a popped token's priority entry goes with it
-- KEYS[8] stale       SET   a popped stale token is forgotten
-- ARGV[1] batch size (of each of waiting and delayed)
-- Returns { messages removed, entries popped }.
local batch = tonumber(ARGV[1])
local removed, popped = 0, 0
local function drop(id)
  if id and not redis.call('ZSCORE', KEYS[6], id) and redis.call('HDEL', KEYS[2], id) == 1 then
    redis.call('HDEL', KEYS[5], id)
    removed = removed + 1
  end
end
local tokens = redis.call('RPOP', KEYS[1], batch)
if tokens then
  for _, token in ipairs(tokens) do
    redis.call('ZREM', KEYS[7], token)
    redis.call('SREM', KEYS[8], token)
    drop(string.match(token, '^%d+:(.+)$'))
    popped = popped + 1
  end
end
local due = redis.call('ZPOPMIN', KEYS[3], batch)
for i = 1, #due, 2 do
  drop(due[i])
  popped = popped + 1
end
if removed > 0 then redis.call('HINCRBY', KEYS[4], 'purged', removed) end
return { removed, popped }
