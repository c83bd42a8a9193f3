-- replay: move dead letters back to waiting with fresh envelopes (attempts reset).
--
-- KEYS[1] dead          ZSET  id -> dead-lettered at; the ids are removed
-- KEYS[2] dead:entries  HASH  id -> entry JSON; the ids are removed
-- KEYS[3] messages      HASH  id -> envelope; the fresh envelope is stored
-- KEYS[4] waiting       LIST  tokens; the ids are pushed as newly ready
-- KEYS[5] deliveries    HASH  id -> delivery count; reset
-- KEYS[6] dedupe        HASH  dedupe key -> id; the replayed message takes its key back
--                             unless another live message holds it
-- KEYS[7] owners        HASH  id -> owner token of a lease; cleared (nobody holds it)
-- KEYS[8] dead:bodies   HASH  id -> stored body; the ids are removed
-- ARGV[1] notify channel
-- ARGV[2..] triples: id, fresh envelope, dedupe key ("" = none)
-- Only ids still in the DLQ move (a concurrent purge or replay wins); returns how many moved.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local was_empty = redis.call('LLEN', KEYS[4]) == 0
local bodies = KEYS[8]
local n = 0
for i = 2, #ARGV, 3 do
  local id, dedupe = ARGV[i], ARGV[i + 2]
  if redis.call('ZREM', KEYS[1], id) == 1 then
    if dedupe ~= '' then
      local holder = redis.call('HGET', KEYS[6], dedupe)
      if not holder or redis.call('HEXISTS', KEYS[3], holder) == 0 then
        redis.call('HSET', KEYS[6], dedupe, id)
      end
    end
    redis.call('HDEL', KEYS[2], id)
    redis.call('HDEL', bodies, id)
    redis.call('HDEL', KEYS[5], id)
    redis.call('HDEL', KEYS[7], id)
    redis.call('HSET', KEYS[3], id, ARGV[i + 1])
    redis.call('LPUSH', KEYS[4], now .. ':' .. id)
    n = n + 1
  end
end
if was_empty and n > 0 then redis.call('PUBLISH', ARGV[1], n) end
return n
