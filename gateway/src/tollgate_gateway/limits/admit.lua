-- Atomic admission for one request of one key. Checks every limit first, then
-- applies all of them, so a refused request consumes nothing.
-- KEYS: 1 rpm zset (request id -> arrival ms)   2 tpm hash (unix second -> tokens)
--       3 in-flight zset (request id -> lease expiry ms)   4 reservations hash (request id -> nanos)
--       5 month spend string (nanos)
-- ARGV: 1 now ms  2 rpm limit  3 tpm limit  4 concurrency limit (0 = none)  5 lease ms
--       6 request id  7 budget nanos (-1 = none)  8 reservation nanos  9 seed nanos (-1 = unknown)
--       10 month key ttl s
-- Returns {code, a, b, c, d, e}: code 0 admitted {rpm used, rpm reset ms, tpm used, tpm reset ms};
-- 1 rpm refused, 2 tpm refused, 3 concurrency refused, 4 budget refused {retry ms, ...};
-- -1 the month's spend must be seeded from Postgres first.
local now = tonumber(ARGV[1])
local rpm, tpm, conc = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local lease, rid = tonumber(ARGV[5]), ARGV[6]
local budget, reserve, seed = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local window = 60000

local rpm_used, rpm_reset = 0, 0
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  rpm_used = redis.call('ZCARD', KEYS[1])
  if rpm_used > 0 then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    rpm_reset = tonumber(oldest[2]) + window - now
  end
  if rpm_used >= rpm then
    return {1, rpm_reset, rpm_used, 0, 0, 0}
  end
end

local tpm_used, tpm_reset = 0, 0
if tpm > 0 then
  local sec = math.floor(now / 1000)
  local all = redis.call('HGETALL', KEYS[2])
  local oldest = nil
  for i = 1, #all, 2 do
    local s = tonumber(all[i])
    if s <= sec - 60 then
      redis.call('HDEL', KEYS[2], all[i])
    else
      tpm_used = tpm_used + tonumber(all[i + 1])
      if oldest == nil or s < oldest then oldest = s end
    end
  end
  if oldest ~= nil then tpm_reset = (oldest + 61) * 1000 - now end
  if tpm_used >= tpm then
    return {2, tpm_reset, tpm_used, 0, 0, 0}
  end
end

local tracked = conc > 0 or budget >= 0
local reserved = 0
if tracked then
  local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
  for _, dead in ipairs(expired) do redis.call('HDEL', KEYS[4], dead) end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if conc > 0 then
    local n = redis.call('ZCARD', KEYS[3])
    if n >= conc then
      local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
      return {3, math.min(1000, tonumber(first[2]) - now), n, 0, 0, 0}
    end
  end
end

local spent = 0
if budget >= 0 then
  local value = redis.call('GET', KEYS[5])
  if value == false then
    if seed < 0 then return {-1, 0, 0, 0, 0, 0} end
    redis.call('SET', KEYS[5], seed, 'EX', tonumber(ARGV[10]))
    spent = seed
  else
    spent = tonumber(value)
  end
  for _, v in ipairs(redis.call('HVALS', KEYS[4])) do reserved = reserved + tonumber(v) end
  -- Admit while anything is left: a concurrent burst overshoots by at most one reservation.
  if spent + reserved >= budget then
    return {4, 0, spent, reserved, 0, 0}
  end
end

if rpm > 0 then
  redis.call('ZADD', KEYS[1], now, rid)
  redis.call('PEXPIRE', KEYS[1], window)
  rpm_used = rpm_used + 1
  if rpm_reset == 0 then rpm_reset = window end
end
if tracked then
  redis.call('ZADD', KEYS[3], now + lease, rid)
  redis.call('PEXPIRE', KEYS[3], lease * 4)
  if budget >= 0 then
    redis.call('HSET', KEYS[4], rid, reserve)
    redis.call('PEXPIRE', KEYS[4], lease * 4)
  end
end
return {0, rpm_used, rpm_reset, tpm_used, tpm_reset, spent + reserved + reserve}
