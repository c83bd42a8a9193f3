-- join: record one workflow group member's result; once every member has one, hand them over.
--
-- KEYS[1] group   HASH    "then" (JSON frames of what follows the group), "size", and member
--                         index -> result JSON (set once per index: a member that runs twice is
--                         counted once); written by group_start before any member was sent
-- KEYS[2] done    STRING  set once what follows the group has started (group_done, or here for
--                         a group that ends its workflow); the results are dropped then
-- KEYS[3] result  LIST    the workflow's result key in this slot: gets {"ok":true,"value":[...]}
--                         when the group ends the workflow ("then" is []): the success
--                         shape of shoal/protocol/results.py, which reads it
-- ARGV[1] member index, ARGV[2] its result JSON, ARGV[3] workflow TTL (ms), ARGV[4] result TTL
-- Returns {"started"} when what follows already started (a late duplicate: nothing to do),
-- {"expired"} when the record is gone, {"waiting"} while members are missing, else
-- {"complete", then, result 0, result 1, ...}. Every call that finds the group complete gets
-- that answer until group_done (a redelivered last member must still start what follows; the
-- enqueue guard makes that happen once).
if redis.call('EXISTS', KEYS[2]) == 1 then return {'started'} end
if redis.call('EXISTS', KEYS[1]) == 0 then return {'expired'} end
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local size = tonumber(redis.call('HGET', KEYS[1], 'size'))
if redis.call('HLEN', KEYS[1]) - 2 < size then return {'waiting'} end
local after = redis.call('HGET', KEYS[1], 'then')
local reply = {'complete', after}
for first = 0, size - 1, 500 do -- HMGET in slices: unpack() has a stack limit
  local fields = {}
  for i = first, math.min(first + 499, size - 1) do fields[#fields + 1] = tostring(i) end
  local slice = redis.call('HMGET', KEYS[1], unpack(fields))
  for _, v in ipairs(slice) do reply[#reply + 1] = v end
end
if after == '[]' then
  local values = {}
  for i = 3, #reply do values[#values + 1] = reply[i] end
  redis.call('DEL', KEYS[3])
  redis.call('RPUSH', KEYS[3], '{"ok":true,"value":[' .. table.concat(values, ',') .. ']}')
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
end
return reply
