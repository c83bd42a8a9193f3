-- ack: finish messages that ran to completion; optionally store their results.
--
-- KEYS[1] inflight    ZSET  id -> lease deadline; the ids are removed
-- KEYS[2] messages    HASH  id -> envelope; the ids are removed
-- KEYS[3] stats       HASH  counters; "completed" counts messages removed here
-- KEYS[4] deliveries  HASH  id -> delivery count; the ids are removed
-- KEYS[5] dedupe      HASH  dedupe key -> id; released when held by the finished id
-- KEYS[6] owners      HASH  id -> owner token of the current lease; removed
-- KEYS[7..] result keys (LIST, one entry) of the messages that carry a result, in ARGV order
-- ARGV[1] result TTL (ms)
-- ARGV[2..] quads: id, owner token, result JSON ("" = none), dedupe key ("" = none)
-- Only the owner of the current lease may ack: a worker whose lease lapsed (its message
-- recovered or re-delivered while it was cut off) changes nothing, and learns so. A message
-- that is gone already (this ack resent after its reply was lost, or finished by another
-- delivery) is not a refusal: nothing will run it again.
-- Returns { completed, id of each ack refused (the message lives on, not ours), ... }.
--#include variadic
local ttl = tonumber(ARGV[1])
local refused = {}
local finished = {}  -- ids whose lease is ours: removed from every structure at once below
local gone = {}  -- the same ids, as a set: a later entry for one is neither done nor refused
local k = 7
for i = 2, #ARGV, 4 do
  local id, owner, result, dedupe = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if gone[id] then  -- finished earlier in this batch: nothing to do
  elseif redis.call('HGET', KEYS[6], id) ~= owner then
    if redis.call('HEXISTS', KEYS[2], id) == 1 then refused[#refused + 1] = id end
  else
    gone[id] = true
    finished[#finished + 1] = id
    if dedupe ~= '' and redis.call('HGET', KEYS[5], dedupe) == id then
      redis.call('HDEL', KEYS[5], dedupe)
    end
    if result ~= '' then
      redis.call('DEL', KEYS[k])
      redis.call('RPUSH', KEYS[k], result)
      redis.call('PEXPIRE', KEYS[k], ttl)
    end
  end
  if result ~= '' then k = k + 1 end
end
local done = 0
if #finished > 0 then
  variadic('ZREM', KEYS[1], finished)
  done = variadic('HDEL', KEYS[2], finished)
  variadic('HDEL', KEYS[4], finished)
  variadic('HDEL', KEYS[6], finished)
end
if done > 0 then redis.call('HINCRBY', KEYS[3], 'completed', done) end
return { done, unpack(refused) }
