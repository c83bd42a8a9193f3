-- join: record one workflow group member's result; once every member has one, return them all.
--
-- KEYS[1] group   HASH  member index -> result JSON (set once per index: a member that runs
--                       twice is counted once), expires with the workflow TTL
-- KEYS[2] result  LIST  only for a group that ends its workflow: gets {"ok":true,"value":[...]}
-- ARGV[1] member index, ARGV[2] its result JSON, ARGV[3] group size, ARGV[4] TTL (ms),
-- ARGV[5] result TTL (ms)
-- Returns nil while members are missing, else the results in index order. Every call that
-- finds the group complete returns them (a redelivered last member must still start what
-- follows; the enqueue guard makes that happen once).
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local size = tonumber(ARGV[3])
if redis.call('HLEN', KEYS[1]) < size then return nil end
local values = {}
for first = 0, size - 1, 500 do -- HMGET in slices: unpack() has a stack limit
  local fields = {}
  for i = first, math.min(first + 499, size - 1) do fields[#fields + 1] = tostring(i) end
  local slice = redis.call('HMGET', KEYS[1], unpack(fields))
  for _, v in ipairs(slice) do values[#values + 1] = v end
end
if KEYS[2] then
  redis.call('DEL', KEYS[2])
  redis.call('RPUSH', KEYS[2], '{"ok":true,"value":[' .. table.concat(values, ',') .. ']}')
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
return values
