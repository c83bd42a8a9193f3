-- enqueue: store messages and make them ready (or delayed), atomically; honour dedupe keys.
--
-- KEYS[1] waiting   LIST  tokens "<ready_ms>:<id>" of ready messages (LPUSH here, RPOP at fetch)
-- KEYS[2] messages  HASH  id -> envelope
-- KEYS[3] delayed   ZSET  id -> due time (ms)
-- KEYS[4] stats     HASH  counters; "enqueued" is incremented
-- KEYS[5] dedupe    HASH  dedupe key -> id of the live message holding it
-- KEYS[6] ready     ZSET  tokens of waiting messages with a priority -> their score (ready_ms
--                         + the priority's offset): fetch.lua serves them by score, and their
--                         tokens stay in waiting, so its length counts them
-- KEYS[7] guard     HASH  only with a guard: the markers that make an enqueue happen once
-- ARGV[1] notify channel, published when waiting goes from empty to non-empty
-- ARGV[2] guard mode: "" (none), "once" (field must be new), "after" (the number that starts
--         the value must exceed the one stored in the field: a schedule's tick claim; a stored
--         value that does not start with a number counts as never claimed)
-- ARGV[3] guard field, ARGV[4] guard value, ARGV[5] guard key TTL (ms, 0 = none)
-- ARGV[6] priority offset (ms) of these messages: "" for the default priority (no ready entry)
-- ARGV[7..] quads: id, delay_ms (0 = ready now), envelope, dedupe key ("" = none)
-- Returns the id each message ended up with: its own, or the live message holding its dedupe
-- key; nil when the guard refused (someone else already enqueued this step or claimed this tick).
-- Idempotent by id while the message lives: an id already in messages is left as it is (no
-- second token, not counted). A call resent after the message finished (acked or dead-lettered)
-- would store it again, so the producer never resends a call that may have reached Redis
-- (see broker.ENQUEUE_RESENDS); it raises EnqueueOutcomeUnknown instead.
local mode = ARGV[2]
if mode == 'once' then
  if redis.call('HSETNX', KEYS[7], ARGV[3], ARGV[4]) == 0 then return nil end
elseif mode == 'after' then
  local stored = redis.call('HGET', KEYS[7], ARGV[3])
  if stored and tonumber(string.match(stored, '^%d+') or '0') >= tonumber(string.match(ARGV[4], '^%d+')) then
    return nil
  end
  redis.call('HSET', KEYS[7], ARGV[3], ARGV[4])
end
if mode ~= '' and tonumber(ARGV[5]) > 0 then redis.call('PEXPIRE', KEYS[7], ARGV[5]) end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local pushed = 0
local was_empty = false
local stored = 0
local ids = {}
local offset = tonumber(ARGV[6])
-- Scores of one millisecond keep their enqueue order: a per-queue sequence adds thousandths
-- (a double holds them exactly at today's times); ids are random within a millisecond.
local count = (#ARGV - 6) / 4
local seq = offset and redis.call('HINCRBY', KEYS[4], 'ordered', count) - count or 0
for i = 7, #ARGV, 4 do
  seq = seq + 1
  local id, delay, dedupe = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 3]
  local holder = dedupe ~= '' and redis.call('HGET', KEYS[5], dedupe)
  if redis.call('HEXISTS', KEYS[2], id) == 1 then
    ids[#ids + 1] = id  -- sent before (a resend): already stored
  elseif holder and redis.call('HEXISTS', KEYS[2], holder) == 1 then
    ids[#ids + 1] = holder
  else
    if dedupe ~= '' then redis.call('HSET', KEYS[5], dedupe, id) end
    redis.call('HSET', KEYS[2], id, ARGV[i + 2])
    if delay > 0 then
      redis.call('ZADD', KEYS[3], now + delay, id)
    else
      -- LPUSH returns the new length: 1 on the first push means the list was empty
      local token = now .. ':' .. id
      local length = redis.call('LPUSH', KEYS[1], token)
      if offset then redis.call('ZADD', KEYS[6], now + offset + (seq % 1000) / 1000, token) end
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
