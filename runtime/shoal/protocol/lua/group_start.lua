-- group_start: write a workflow group's record before its members are sent.
--
-- KEYS[1] group  HASH  "then" (JSON frames of what follows the group) and "size"; members'
--                      results join it later (join.lua)
-- ARGV[1] then JSON, ARGV[2] size, ARGV[3] workflow TTL (ms)
-- Idempotent: a step started again (its feeder ran twice) rewrites the same record; results
-- already recorded stay.
redis.call('HSETNX', KEYS[1], 'then', ARGV[1])
redis.call('HSETNX', KEYS[1], 'size', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
