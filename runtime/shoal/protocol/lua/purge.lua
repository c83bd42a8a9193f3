-- purge: delete dead letters, older than a cutoff and/or by id, a bounded batch per call.
--
-- KEYS[1] dead          ZSET  id -> dead-lettered at (ms); entries scored <= cutoff go
-- KEYS[2] dead:entries  HASH  id -> entry JSON; removed with them
-- KEYS[3] dead:bodies   HASH  id -> stored body; removed with them
-- ARGV[1] minimum age (ms, by the Redis clock; -1 = any age), ARGV[2] batch size,
-- ARGV[3..] ids: when given, only these are deleted (those old enough), and the deleted ids
-- are returned; else returns how many were deleted, and the caller repeats until 0.
local cutoff = math.huge
if tonumber(ARGV[1]) >= 0 then
  local t = redis.call('TIME')
  cutoff = t[1] * 1000 + math.floor(t[2] / 1000) - tonumber(ARGV[1])
end
local function delete(id)
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
if #ARGV > 2 then
  local deleted = {}
  for i = 3, #ARGV do
    local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
    if score and tonumber(score) <= cutoff then
      delete(ARGV[i])
      deleted[#deleted + 1] = ARGV[i]
    end
  end
  return deleted
end
local upper = '+inf'
if cutoff ~= math.huge then upper = cutoff end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', upper, 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do delete(id) end
return #ids
