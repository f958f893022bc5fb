-- Completion of one admitted request: free its lease and reservations, charge the real
-- tokens to the tokens-per-minute window and the real cost to the month's spend, and append
-- its usage row to the stream the writers drain to Postgres, all in one step.
-- KEYS: 1 tpm hash ("x" -> when its expiry is next pushed back, ms)  2 in-flight zset
--       3 reservations hash  4 month spend string  5 usage stream
--       (the other shapes: see admit.lua)
-- ARGV: 1 now ms  2 member  3 tokens  4 cost nanos  5 month ttl s  6 charge tpm (1/0)
--       7 charge spend (1/0)  8 usage row (a COPY line; empty: none)
local now, member = tonumber(ARGV[1]), ARGV[2]
local tokens, cost = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREM', KEYS[2], member)
local held = redis.call('HMGET', KEYS[3], member, 't:' .. member)
if held[1] or held[2] then
  redis.call('HDEL', KEYS[3], member, 't:' .. member)
  if held[1] then redis.call('HINCRBY', KEYS[3], '#', '-' .. held[1]) end
  if held[2] then redis.call('HINCRBY', KEYS[3], '#t', '-' .. held[2]) end
end
if ARGV[6] == '1' and tokens > 0 then
  local sec = math.floor(now / 1000)
  local head = redis.call('HMGET', KEYS[1], 's', 'lo', 'x')
  local lo = tonumber(head[2] or '0')
  if tonumber(head[1] or '0') <= 0 then
    redis.call('HSET', KEYS[1], 'lo', sec)  -- the only bucket, so the oldest
  elseif sec < lo then
    sec = lo  -- a clock behind the others': the oldest bucket still counted takes it
  end
  redis.call('HINCRBY', KEYS[1], sec, ARGV[3])
  redis.call('HINCRBY', KEYS[1], 's', ARGV[3])
  -- The hash must outlive its last charge by the window (and admit.lua's rescan by more):
  -- its expiry is pushed to 180 s at most once a minute, so it lives 120 s past any charge.
  if tonumber(head[3] or '0') <= now then
    redis.call('HSET', KEYS[1], 'x', now + 60000)
    redis.call('EXPIRE', KEYS[1], 180)
  end
end
if ARGV[7] == '1' and cost > 0 and redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('INCRBY', KEYS[4], cost)
end
if ARGV[8] ~= '' then
  redis.call('XADD', KEYS[5], '*', 'r', ARGV[8])
end
return 1
