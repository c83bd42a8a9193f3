-- workflow_failed: store a workflow's failure for its handle, unless it already succeeded.
--
-- KEYS[1] result  LIST  the workflow's result (one JSON entry; its format and SUCCESS_PREFIX,
--                       tested below, are shoal/protocol/results.py's)
-- ARGV[1] failure JSON, ARGV[2] result TTL (ms)
-- A success stored by the last step (or a final group) is never replaced by a late failure; a
-- failure is replaced by a later success (a replayed member carried the workflow on).
local current = redis.call('LINDEX', KEYS[1], 0)
if current and string.sub(current, 1, 10) == '{"ok":true' then return 0 end
redis.call('DEL', KEYS[1])
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
