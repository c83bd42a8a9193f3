-- variadic: not a script of its own. fetch.lua and ack.lua include it ("--#include variadic").
--
-- variadic(command, key, args): one call of a variadic command (HSET, ZADD, HDEL, ZREM) for a
-- whole batch's arguments instead of one call per message, in chunks of at most 4,000 (even:
-- pairs stay whole) under Lua's limit on what unpack() returns. Returns the sum of the replies.
local function variadic(command, key, args)
  local total = 0
  for i = 1, #args, 4000 do
    total = total + redis.call(command, key, unpack(args, i, math.min(i + 3999, #args)))
  end
  return total
end
