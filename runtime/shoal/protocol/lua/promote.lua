-- promote: make the waiting list truthful without a worker. Moves due delayed messages, due
-- retries and lapsed leases into waiting (the same step a worker's fetch begins with: see
-- promote_due.lua), so LLEN of waiting - what a stock KEDA redis scaler reads - counts them
-- even at zero replicas. The operator runs it on every poll of a Queue.
--
-- KEYS[1] waiting   LIST  tokens "<ready_ms>:<id>"; what is due is pushed at the fetch end
-- KEYS[2] messages  HASH  id -> envelope; a lapsed lease is returned only if its message lives
-- KEYS[3] inflight  ZSET  id -> lease deadline (ms); entries past it are removed
-- KEYS[4] delayed   ZSET  id -> due time (ms); entries due are removed
-- KEYS[5] stats     HASH  counters; "recovered" counts leases that lapsed
-- KEYS[6] owners    HASH  id -> owner token of the current lease; removed for a lapsed lease
-- ARGV[1] max delayed / lapsed entries to move, each (bounds the script's run time)
-- ARGV[2] notify channel, published when waiting goes from empty to non-empty (a worker that
--         sleeps until its next due time wakes for a lapsed lease at once)
-- Returns { delayed moved, leases recovered, waiting length after }.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local limit = tonumber(ARGV[1])
local waiting, messages, inflight, delayed, stats, owners =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local before = redis.call('LLEN', waiting)
--#include promote_due
local after = redis.call('LLEN', waiting)
if before == 0 and after > 0 then redis.call('PUBLISH', ARGV[2], after) end
return { promoted, recovered, after }
