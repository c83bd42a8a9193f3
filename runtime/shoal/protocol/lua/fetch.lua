-- fetch: promote due delayed messages, recover expired leases (promote_due.lua, shared with the
-- operator's promote.lua), then lease up to N ready ones.
--
-- KEYS[1] waiting     LIST  tokens "<ready_ms>:<id>"; RPOP takes the oldest
-- KEYS[2] messages    HASH  id -> envelope
-- KEYS[3] inflight    ZSET  id -> lease deadline (ms); the leases taken here are added
-- KEYS[4] delayed     ZSET  id -> due time (ms); due ones move to waiting
-- KEYS[5] stats       HASH  counters; "recovered" counts leases that expired
-- KEYS[6] deliveries  HASH  id -> times handed to a worker (so lost deliveries can be counted)
-- KEYS[7] owners      HASH  id -> the owner token of the current lease: a number never given
--                           out twice (the "leases" counter in stats); every later transition
--                           checks it, and a recovered lease has none until leased again
-- KEYS[8] paused      STRING present while the queue is paused: due and lapsed messages are
--                           still moved to waiting (its length stays true), none is leased
-- KEYS[9] config      HASH  the queue's defaults: "rate_limit" ("N/s", "N/m", "N/h") limits the
--                           starts of the whole queue (shoal.rate_limit)
-- KEYS[10] rate       HASH  rate clocks; "queue" is the theoretical arrival time of the next
--                           start (ms): GCRA, evenly spaced, no burst after an idle spell
-- ARGV[1] lease length (ms)
-- ARGV[2] max messages to lease
-- ARGV[3] max delayed / expired entries to move per call (bounds the script's run time)
-- ARGV[4] rate window (ms): starts of a limited queue may be leased this much before their slot
-- ARGV[5] most prioritized tokens moved aside per call to find a plain one behind them
-- ARGV[6] result TTL (ms): cancels asked longer ago than this are pruned
-- KEYS[13] cancels    ZSET  id -> when a cancel was asked while it ran: a message leased again
--                           (retried, handed back, recovered) is flagged, never run
-- KEYS[11] ready      ZSET  tokens of waiting prioritized messages -> score (enqueue.lua)
-- KEYS[12] stale      SET   tokens in waiting whose messages were leased by priority
-- Returns { next_due_ms or -1, now_ms, { ids leased whose cancel was asked }, id1, envelope1,
--           deliveries1, owner1, id2, ... }.
-- A token whose message is gone (acked by a worker whose lease had expired) is dropped.
-- A token that is not "<ms>:<id>" is returned whole with a false envelope and owner 0, for the
-- dead-letter queue; nothing else is touched for it (it may even name a live message).
-- A deliveries value that is not an integer (written by something else) counts as 0.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local limit = tonumber(ARGV[3])

local waiting, messages, inflight, delayed, stats, owners =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[7]
--#include promote_due
--#include variadic

local out = { -1, now, {} }
local cancels = redis.call('ZCARD', KEYS[13]) > 0
if cancels then redis.call('ZREMRANGEBYSCORE', KEYS[13], '-inf', now - tonumber(ARGV[6])) end
local nxt = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
if #nxt > 0 then out[1] = tonumber(nxt[2]) end

local want = tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[8]) == 1 then want = 0 end
local interval, tat
local rate_text = want > 0 and redis.call('HGET', KEYS[9], 'rate_limit')
if rate_text then
  local n, unit = string.match(rate_text, '^([%d.]+)/([smh])$')
  local per = ({ s = 1000, m = 60000, h = 3600000 })[unit]
  n = tonumber(n)
  if per and n and n > 0 then
    interval = per / n
    local window = tonumber(ARGV[4])
    -- a fetch moves the clock at most one interval past the window: one further ahead is
    -- stale (the limit was raised) and waits one new interval, not the old one
    local stored = tonumber(redis.call('HGET', KEYS[10], 'queue')) or 0
    tat = math.max(math.min(stored, now + window + interval), now)
    local allowed = math.max(0, math.floor((now + window - tat) / interval) + 1)
    if allowed < want then
      want = allowed
      local slot = tat + allowed * interval
      if (out[1] < 0 or out[1] > slot) and redis.call('LLEN', KEYS[1]) > 0 then
        out[1] = math.floor(slot)  -- messages wait: wake the worker for the next start
      end
    end
  end
end
local deadline = now + tonumber(ARGV[1])
local got = 0

-- The leases taken are written once per batch, in variadic commands (`flush`): owner tokens
-- are numbered from the "leases" counter, which is moved past them once.
local leases, numbered = nil, 0
local owned, leased = {}, {}

local function flush()
  if numbered == 0 then return end
  redis.call('HINCRBY', KEYS[5], 'leases', numbered)
  variadic('HSET', KEYS[7], owned)
  variadic('ZADD', KEYS[3], leased)
  leases, numbered, owned, leased = leases + numbered, 0, {}, {}
end

-- Lease one popped token: its message, or (a token that is not "<ms>:<id>") the token itself
-- for the dead-letter queue; a token whose message is gone is dropped.
local function take(token)
  local ready, id = string.match(token, '^(%d+):(.+)$')
  local sep = ready ~= nil
  id = id or token
  local body = sep and redis.call('HGET', KEYS[2], id) or nil
  if body then
    local delivery = redis.pcall('HINCRBY', KEYS[6], id, 1)
    if type(delivery) ~= 'number' then  -- not an integer (written by something else): 0
      delivery = 1
      redis.call('HSET', KEYS[6], id, delivery)
    end
    leases = leases or redis.call('HINCRBY', KEYS[5], 'leases', 0)
    numbered = numbered + 1
    local owner = leases + numbered
    owned[#owned + 1] = id
    owned[#owned + 1] = owner
    leased[#leased + 1] = deadline
    leased[#leased + 1] = id
    if cancels and redis.call('ZSCORE', KEYS[13], id) then table.insert(out[3], id) end
    out[#out + 1] = id
    out[#out + 1] = body
    out[#out + 1] = delivery
    out[#out + 1] = owner
    got = got + 1
  elseif not sep then
    out[#out + 1] = token
    out[#out + 1] = false
    out[#out + 1] = 1
    out[#out + 1] = 0
    got = got + 1
  end
end

local ready_z, stale = KEYS[11], KEYS[12]
if redis.call('ZCARD', ready_z) == 0 and redis.call('SCARD', stale) == 0 then
  -- No priorities in play: FIFO, in batches.
  while got < want do
    local tokens = redis.call('RPOP', KEYS[1], want - got)
    if not tokens then break end
    for _, token in ipairs(tokens) do take(token) end
  end
else
  -- Priorities: the next message is the lower score of the best prioritized one (ready) and
  -- the oldest plain token (its score is its ready time). A prioritized message leased ahead
  -- of its token leaves that token in waiting, marked stale, so waiting's length never counts
  -- less than what is ready; a stale token is dropped when it reaches the fetch end.
  local function early(token)  -- lease a prioritized message whose token is elsewhere in waiting
    flush()  -- (what this call leased so far is in inflight, and not leased again)
    redis.call('ZREM', ready_z, token)
    local id = string.match(token, '^%d+:(.+)$')
    if id and redis.call('HEXISTS', KEYS[2], id) == 1 and not redis.call('ZSCORE', KEYS[3], id)
        and not redis.call('ZSCORE', KEYS[4], id) then
      redis.call('SADD', stale, token)
      take(token)
    end  -- else cancelled, or taken by its token meanwhile: nothing to lease
  end
  local cycles = 0
  while got < want do
    local tail = redis.call('LINDEX', KEYS[1], -1)
    local best = redis.call('ZRANGE', ready_z, 0, 0, 'WITHSCORES')
    if tail and redis.call('SREM', stale, tail) == 1 then
      redis.call('RPOP', KEYS[1])  -- its message was leased by priority already
    elseif #best == 0 then
      if not tail then break end
      take(redis.call('RPOP', KEYS[1]))
    elseif tail and redis.call('ZSCORE', ready_z, tail) then
      -- a prioritized token is next. Plain tokens behind it score their (later) ready times:
      -- when it is the best and scores no later than its own ready time, none can beat it;
      -- else look past it (bounded), unless only prioritized ones wait.
      local score = tonumber(redis.call('ZSCORE', ready_z, tail))
      local urgent = score <= (tonumber(string.match(tail, '^(%d+):')) or 0)
      local plain = redis.call('LLEN', KEYS[1]) - redis.call('ZCARD', ready_z)
        - redis.call('SCARD', stale)
      local look = plain > 0 and cycles < tonumber(ARGV[5])
      if tail == best[1] and (urgent or not look) then  -- take it from both
        redis.call('RPOP', KEYS[1])
        redis.call('ZREM', ready_z, tail)
        take(tail)
      elseif look then
        redis.call('LMOVE', KEYS[1], KEYS[1], 'RIGHT', 'LEFT')
        cycles = cycles + 1
      else
        early(best[1])
      end
    else
      local ready_ms = tail and tonumber(string.match(tail, '^(%d+):'))
      if not tail or (ready_ms and tonumber(best[2]) < ready_ms) then
        early(best[1])
      else
        take(redis.call('RPOP', KEYS[1]))
      end
    end
  end
end
flush()
if interval and got > 0 then redis.call('HSET', KEYS[10], 'queue', tat + got * interval) end
return out
