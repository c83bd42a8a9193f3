-- status: where one message is, read in one atomic step (``handle.status()``). Reads only.
--
-- KEYS[1] messages      HASH  id -> envelope (present while waiting, delayed or running)
-- KEYS[2] inflight      ZSET  id -> lease deadline (running)
-- KEYS[3] delayed       ZSET  id -> due time (delayed, or waiting to retry)
-- KEYS[4] dead:entries  HASH  id -> dead-letter entry JSON
-- KEYS[5] result        LIST  the stored result (successes only when the task stores them)
-- KEYS[6] progress      STRING the last progress report
-- KEYS[7] cancels       ZSET  id -> when a cancel was asked of it while it ran
-- ARGV[1] id
-- Returns { now_ms, envelope, lease deadline, due time, dead entry, result, progress,
--           cancel asked at }, false for each that is absent.
local t = redis.call('TIME')
local id = ARGV[1]
return {
  t[1] * 1000 + math.floor(t[2] / 1000),
  redis.call('HGET', KEYS[1], id),
  redis.call('ZSCORE', KEYS[2], id),
  redis.call('ZSCORE', KEYS[3], id),
  redis.call('HGET', KEYS[4], id),
  redis.call('LINDEX', KEYS[5], 0),
  redis.call('GET', KEYS[6]),
  redis.call('ZSCORE', KEYS[7], id),
}
