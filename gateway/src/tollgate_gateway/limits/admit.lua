-- Atomic admission for one request of one key. Checks every limit first, then
-- applies all of them, so a refused request consumes nothing.
-- KEYS: 1 rpm zset (member -> arrival ms)   2 tpm hash (unix second -> tokens charged;
--       "s" -> their sum, "lo" -> no bucket is older than this second)
--       3 in-flight zset (member -> lease expiry ms)   4 reservations hash (member -> nanos,
--       "#" -> their sum; "t:" .. member -> tokens, "#t" -> their sum)   5 month spend
--       string (nanos)
-- ARGV: 1 now ms  2 rpm limit  3 tpm limit  4 concurrency limit (0 = none)  5 lease ms
--       6 member  7 budget nanos (-1 = none)  8 seed nanos (-1 = unknown)  9 month key ttl s
--       10 prompt tokens (the estimate)  11 output tokens asked for  12 fewest output tokens
--       worth admitting (0 for embeddings)  13 input nanos per token  14 output nanos per token
-- Returns {code, a, b, c, d, e}: code 0 admitted {rpm used, rpm reset ms, tpm used, tpm reset
-- ms, output cap}; 1 rpm refused, 2 tpm refused, 3 concurrency refused, 4 budget refused
-- {retry ms, ...}; -1 the month's spend must be seeded from Postgres first.
--
-- Tokens and money are reserved for the request's whole possible size: the prompt estimate
-- plus the output cap, which is clamped to what the key has left and which the gateway
-- sends upstream. So (charged in the last 60 s + reserved in flight) never exceeds the TPM
-- limit, and (spent + reserved) never exceeds the budget, as long as real prompts are no
-- larger than their estimate; settlement replaces a reservation by the real, smaller charge.
--
-- The sums are kept beside what they add up (settle.lua keeps them too), so an admission
-- costs the same whatever a key has in flight or charged in the last minute: only buckets
-- that just left the window, and leases that expired, are visited.
local now = tonumber(ARGV[1])
local rpm, tpm, conc = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local lease, member = tonumber(ARGV[5]), ARGV[6]
local budget, seed = tonumber(ARGV[7]), tonumber(ARGV[8])
local prompt, cap, least = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local in_price, out_price = tonumber(ARGV[13]), tonumber(ARGV[14])
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

local tracked = conc > 0 or budget >= 0 or tpm > 0
if tracked then
  local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  if #first > 0 and tonumber(first[2]) <= now then
    -- Leases their holders stopped renewing (a gateway that died): free what they reserved.
    for _, dead in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do
      local v = redis.call('HMGET', KEYS[4], dead, 't:' .. dead)
      if v[1] or v[2] then
        redis.call('HDEL', KEYS[4], dead, 't:' .. dead)
        if v[1] then redis.call('HINCRBY', KEYS[4], '#', string.format('%d', -tonumber(v[1]))) end
        if v[2] then redis.call('HINCRBY', KEYS[4], '#t', string.format('%d', -tonumber(v[2]))) end
      end
    end
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
    first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  end
  if conc > 0 then
    local n = redis.call('ZCARD', KEYS[3])
    if n >= conc then
      return {3, math.min(1000, tonumber(first[2]) - now), n, 0, 0, 0}
    end
  end
end

-- Both reservation sums in one read (the hash keeps them beside the entries).
local sums = {false, false}
if tpm > 0 or budget >= 0 then sums = redis.call('HMGET', KEYS[4], '#', '#t') end

local tpm_used, tpm_reset = 0, 0
if tpm > 0 then
  local sec = math.floor(now / 1000)
  local head = redis.call('HMGET', KEYS[2], 's', 'lo')
  local charged, lo = tonumber(head[1] or '0'), tonumber(head[2] or '0')
  if charged > 0 and lo < sec - 240 then
    -- Older than the hash can live: a clock that jumped, or a hash of another shape. Count
    -- the buckets afresh (the one step here that visits them all).
    local all = redis.call('HGETALL', KEYS[2])
    charged, lo = 0, sec
    for i = 1, #all, 2 do
      local b = tonumber(all[i])
      if b ~= nil then
        if b <= sec - 60 then
          redis.call('HDEL', KEYS[2], all[i])
        else
          charged = charged + tonumber(all[i + 1])
          if b < lo then lo = b end
        end
      end
    end
    redis.call('HSET', KEYS[2], 's', string.format('%d', charged), 'lo', lo)
  elseif charged > 0 and lo <= sec - 60 then
    -- Buckets that left the window leave the sum (the hash expires two minutes after its
    -- last charge, so this visits at most a few minutes of seconds, and mostly one).
    local s = lo
    while s <= sec - 60 do
      local v = redis.call('HGET', KEYS[2], s)
      if v then
        charged = charged - tonumber(v)
        redis.call('HDEL', KEYS[2], s)
      end
      s = s + 1
    end
    while charged > 0 and s < sec and redis.call('HEXISTS', KEYS[2], s) == 0 do s = s + 1 end
    if charged < 0 then charged = 0 end
    lo = s
    redis.call('HSET', KEYS[2], 's', string.format('%d', charged), 'lo', lo)
  end
  if charged > 0 then tpm_reset = (lo + 61) * 1000 - now end
  tpm_used = charged + tonumber(sums[2] or '0')
  local left = tpm - tpm_used - prompt
  if left < least then
    -- What is in flight is released when it ends; what was charged, when it leaves the window.
    local retry = tpm_reset
    if retry <= 0 then retry = 1000 end
    return {2, retry, tpm_used, prompt, 0, 0}
  end
  if cap > left then cap = left end
end

local spent, reserved = 0, 0
if budget >= 0 then
  local value = redis.call('GET', KEYS[5])
  if value == false then
    if seed < 0 then return {-1, 0, 0, 0, 0, 0} end
    redis.call('SET', KEYS[5], seed, 'EX', tonumber(ARGV[9]))
    spent = seed
  else
    spent = tonumber(value)
  end
  reserved = tonumber(sums[1] or '0')
  local left = budget - spent - reserved
  if left <= 0 or left < prompt * in_price + least * out_price then
    return {4, 0, spent, reserved, 0, 0}
  end
  if out_price > 0 then
    local affordable = math.floor((left - prompt * in_price) / out_price)
    if cap > affordable then cap = affordable end
  end
end
if cap < 0 then cap = 0 end

if rpm > 0 then
  redis.call('ZADD', KEYS[1], now, member)
  redis.call('PEXPIRE', KEYS[1], window)
  rpm_used = rpm_used + 1
  if rpm_reset == 0 then rpm_reset = window end
end
if tracked then
  redis.call('ZADD', KEYS[3], now + lease, member)
  redis.call('PEXPIRE', KEYS[3], lease * 4)
  -- One write for what is reserved: money under the member, tokens under "t:" .. member.
  local fields = {}
  if budget >= 0 then
    local nanos = string.format('%d', math.ceil(prompt * in_price + cap * out_price))
    fields[#fields + 1] = member
    fields[#fields + 1] = nanos
    redis.call('HINCRBY', KEYS[4], '#', nanos)
  end
  if tpm > 0 then
    local tokens = string.format('%d', prompt + cap)
    fields[#fields + 1] = 't:' .. member
    fields[#fields + 1] = tokens
    redis.call('HINCRBY', KEYS[4], '#t', tokens)
  end
  if #fields > 0 then
    redis.call('HSET', KEYS[4], unpack(fields))
    redis.call('PEXPIRE', KEYS[4], lease * 4)
  end
  if tpm > 0 then
    tpm_used = tpm_used + prompt + cap
    if tpm_reset <= 0 then tpm_reset = window end
  end
end
return {0, rpm_used, rpm_reset, tpm_used, tpm_reset, cap}
