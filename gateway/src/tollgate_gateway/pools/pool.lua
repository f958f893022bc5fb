-- A pool's slots shared by every gateway process: start-time fair queuing (SFQ, see
-- fairqueue/core.py) kept in Redis, so that the gateways together never have more than the
-- pool's capacity in flight and serve waiting requests in one fair order.
-- KEYS (one hash tag, the pool's queue): 1 running zset (member -> lease expiry ms)
--   2 waiting zset (member -> start tag)   3 waiting leases zset (member -> expiry ms)
--   4 tags hash ("vt" -> virtual time, "f:<flow>" -> the flow's last finish tag, "x" -> when
--   the acquire's fast path next pushes the keys' expiry back, ms)
-- ARGV: 1 op (acquire | release | cancel | poll)  2 now ms  3 lease ms  4 capacity
--   5 grant channel prefix (the member's owner is appended)
--   acquire: 6 member  7 flow  8 weight  9 cost  10 most waiting
--   release, cancel: 6 member
--   poll: 6.. members this process holds (running or waiting): their leases are renewed
-- Members are "<owner>:<n>": a grant is published on <prefix><owner> with the member.
-- Returns: acquire {1 granted | 0 waiting | 2 full, running, waiting} (a waiter it displaced
--   is told on its owner's channel: "-" and its member);
--   release {was running, running, waiting}; cancel {1 it was granted meanwhile (kept) | 0};
--   poll {running, waiting, state per member: 1 running, 0 waiting, -1 unknown (expired)}.
local run, wait, wlease, tags = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op, now, lease, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local prefix = ARGV[5]
local keep = lease * 4

-- The common case, a pool with room and nobody waiting, takes a few commands: holders that
-- stopped renewing (a gateway that died) are purged, and room handed out, only when the pool
-- looks full or someone waits (and on every poll, which each gateway sends every second).
local function purge()
  redis.call('ZREMRANGEBYSCORE', run, '-inf', now)
  local dead = redis.call('ZRANGEBYSCORE', wlease, '-inf', now)
  for _, m in ipairs(dead) do redis.call('ZREM', wait, m) end
  redis.call('ZREMRANGEBYSCORE', wlease, '-inf', now)
end

local function dispatch()
  local vt = nil
  while redis.call('ZCARD', run) < cap do
    local top = redis.call('ZPOPMIN', wait)
    if #top == 0 then break end
    local m, s = top[1], tonumber(top[2])
    redis.call('ZREM', wlease, m)
    redis.call('ZADD', run, now + lease, m)
    if vt == nil then vt = tonumber(redis.call('HGET', tags, 'vt') or '0') end
    if s > vt then vt = s end
    local owner = string.match(m, '^([^:]+):')
    if owner then redis.call('PUBLISH', prefix .. owner, m) end
  end
  if vt ~= nil then redis.call('HSET', tags, 'vt', vt) end
end

-- Slow path: purge, then give room that appeared to those waiting.
local function settle_room()
  purge()
  dispatch()
end

local function touch()
  redis.call('PEXPIRE', run, keep)
  redis.call('PEXPIRE', wait, keep)
  redis.call('PEXPIRE', wlease, keep)
  redis.call('PEXPIRE', tags, keep)
end

if op == 'acquire' then
  local member, flow = ARGV[6], 'f:' .. ARGV[7]
  local weight, cost, most = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
  local running = redis.call('ZCARD', run)
  local waiting = redis.call('ZCARD', wait)
  if running >= cap or waiting > 0 then
    settle_room()  -- dead holders' room, and more replicas', goes to those waiting first
    running = redis.call('ZCARD', run)
    waiting = redis.call('ZCARD', wait)
  end
  local t = redis.call('HMGET', tags, 'vt', flow, 'x')
  local vt, start = tonumber(t[1] or '0'), tonumber(t[2] or '0')
  if start < vt then start = vt end
  if running < cap and waiting == 0 then
    redis.call('ZADD', run, now + lease, member)
    if start > vt then vt = start end
    -- The keys' expiry is pushed back when "x" (due ms) says so, at most every keep / 2,
    -- and whenever the running set is new; holders' polls push it back too (touch).
    local due = tonumber(t[3] or '0') <= now
    if due then
      redis.call('HSET', tags, flow, start + cost / weight, 'vt', vt, 'x', now + keep / 2)
      redis.call('PEXPIRE', tags, keep)
    else
      redis.call('HSET', tags, flow, start + cost / weight, 'vt', vt)
    end
    if due or running == 0 then redis.call('PEXPIRE', run, keep) end
    return {1, running + 1, 0}
  end
  if waiting >= most then
    -- Full: the newcomer takes the place of the last waiter in the fair order (the largest
    -- start tag: a flow further ahead), which is refused instead, so one flow cannot fill
    -- the queue for every other; a newcomer no earlier than that waiter is refused. The
    -- refused waiter's owner is told on its channel ("-" and the member); its turn stays
    -- counted against its flow.
    local last = redis.call('ZRANGE', wait, -1, -1, 'WITHSCORES')
    if #last == 0 or tonumber(last[2]) <= start then return {2, running, waiting} end
    redis.call('ZREM', wait, last[1])
    redis.call('ZREM', wlease, last[1])
    local owner = string.match(last[1], '^([^:]+):')
    if owner then redis.call('PUBLISH', prefix .. owner, '-' .. last[1]) end
    waiting = waiting - 1
  end
  redis.call('HSET', tags, flow, start + cost / weight)
  redis.call('ZADD', wait, start, member)
  redis.call('ZADD', wlease, now + lease, member)
  touch()
  return {0, running, waiting + 1}
elseif op == 'release' then
  local member = ARGV[6]
  local was = redis.call('ZREM', run, member)
  if was == 0 then  -- it was still waiting (or already gone)
    redis.call('ZREM', wait, member)
    redis.call('ZREM', wlease, member)
  end
  local waiting = redis.call('ZCARD', wait)
  if waiting > 0 then
    settle_room()
    waiting = redis.call('ZCARD', wait)
  end
  return {was, redis.call('ZCARD', run), waiting}
elseif op == 'cancel' then
  local member = ARGV[6]
  if redis.call('ZSCORE', run, member) then return {1, 0, 0} end
  redis.call('ZREM', wait, member)
  redis.call('ZREM', wlease, member)
  settle_room()
  return {0, redis.call('ZCARD', run), redis.call('ZCARD', wait)}
end
-- poll
settle_room()
local states = {}
for i = 6, #ARGV do
  local m = ARGV[i]
  if redis.call('ZSCORE', run, m) then
    redis.call('ZADD', run, 'XX', now + lease, m)
    states[#states + 1] = 1
  elseif redis.call('ZSCORE', wait, m) then
    redis.call('ZADD', wlease, 'XX', now + lease, m)
    states[#states + 1] = 0
  else
    states[#states + 1] = -1
  end
end
touch()
return {redis.call('ZCARD', run), redis.call('ZCARD', wait), states}
