-- purge: delete dead letters older than a cutoff, a bounded batch per call.
--
-- KEYS[1] dead          ZSET  id -> dead-lettered at (ms); entries scored <= cutoff go
-- KEYS[2] dead:entries  HASH  id -> entry JSON; removed with them
-- ARGV[1] minimum age (ms, by the Redis clock; -1 = every entry), ARGV[2] batch size
-- Returns how many were deleted; the caller repeats until 0.
local cutoff = '+inf'
if tonumber(ARGV[1]) >= 0 then
  local t = redis.call('TIME')
  cutoff = t[1] * 1000 + math.floor(t[2] / 1000) - tonumber(ARGV[1])
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff, 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
return #ids
