-- schedule_publish: a worker declares its app's code schedules for one queue.
--
-- KEYS[1] schedules       HASH  name -> schedule JSON ("source": "code" or "queue")
-- KEYS[2] schedules:seen  HASH  code schedule name -> when a worker last declared it (ms)
-- KEYS[3] schedules:declared STRING  when a worker last declared (ms), even none: a schedule
--                         declared long before that was removed from the code
-- ARGV[1] now (ms), ARGV[2..] pairs: name, schedule JSON (source "code")
-- A missing name, or one holding another version of a code schedule (a new release), gets the
-- JSON; one a Queue resource holds ("source":"queue") is left alone: it overrides the code.
-- Checked and written in one step, so an override written meanwhile is never lost.
-- Returns how many entries were written.
local function from_queue(raw)
  local ok, decoded = pcall(cjson.decode, raw)
  return ok and type(decoded) == 'table' and decoded.source == 'queue'
end
local written = 0
redis.call('SET', KEYS[3], ARGV[1])
for i = 2, #ARGV, 2 do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  if not current or (current ~= ARGV[i + 1] and not from_queue(current)) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    written = written + 1
  end
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[1])
end
return written
