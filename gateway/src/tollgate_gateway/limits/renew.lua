-- Renewal of one key's in-flight requests held by one gateway: push each lease's expiry
-- forward and, in the same step, the expiry of the key's lease set and reservation hash,
-- so a request of any length counts for its whole life. Members already gone (settled,
-- or expired while this gateway could not reach Redis) are not brought back.
-- KEYS: 1 in-flight zset  2 reservations hash (nanos and tokens, see admit.lua)
-- ARGV: 1 lease expiry ms  2 set ttl ms  3.. members
local expiry, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 3, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i])
end
for i = 1, 2 do
  redis.call('PEXPIRE', KEYS[i], ttl)
end
return 1
