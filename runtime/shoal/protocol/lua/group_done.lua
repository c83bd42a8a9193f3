-- group_done: what follows a workflow group has started; drop its results, remember it.
--
-- KEYS[1] group  HASH    the group's record (see join.lua); deleted
-- KEYS[2] done   STRING  set, with the workflow TTL: a late duplicate join finds it and does
--                        nothing, instead of finding no record and calling the group expired
-- ARGV[1] workflow TTL (ms)
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
return 1
