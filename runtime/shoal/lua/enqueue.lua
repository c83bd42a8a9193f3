-- enqueue: store messages and make them ready (or delayed), atomically; honour dedupe keys.
--
-- KEYS[1] waiting   LIST  tokens "<ready_ms>:<id>" of ready messages (LPUSH here, RPOP at fetch)
-- KEYS[2] messages  HASH  id -> envelope
-- KEYS[3] delayed   ZSET  id -> due time (ms)
-- KEYS[4] stats     HASH  counters; "enqueued" is incremented
-- KEYS[5] dedupe    HASH  dedupe key -> id of the live message holding it
-- ARGV[1] notify channel, published when waiting goes from empty to non-empty
-- ARGV[2..] quads: id, delay_ms (0 = ready now), envelope, dedupe key ("" = none)
-- Returns the id each message ended up with: its own, or the live message holding its dedupe key.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local pushed = 0
local was_empty = false
local stored = 0
local ids = {}
for i = 2, #ARGV, 4 do
  local id, delay, dedupe = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 3]
  local holder = dedupe ~= '' and redis.call('HGET', KEYS[5], dedupe)
  if holder and redis.call('HEXISTS', KEYS[2], holder) == 1 then
    ids[#ids + 1] = holder
  else
    if dedupe ~= '' then redis.call('HSET', KEYS[5], dedupe, id) end
    redis.call('HSET', KEYS[2], id, ARGV[i + 2])
    if delay > 0 then
      redis.call('ZADD', KEYS[3], now + delay, id)
    else
      -- LPUSH returns the new length: 1 on the first push means the list was empty
      local length = redis.call('LPUSH', KEYS[1], now .. ':' .. id)
      if pushed == 0 and length == 1 then was_empty = true end
      pushed = pushed + 1
    end
    stored = stored + 1
    ids[#ids + 1] = id
  end
end
if stored > 0 then redis.call('HINCRBY', KEYS[4], 'enqueued', stored) end
if was_empty and pushed > 0 then
  redis.call('PUBLISH', ARGV[1], pushed)
end
return ids
