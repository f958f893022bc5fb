-- The usage row of a request whose key has no limits to settle (see settle.lua).
-- KEYS: 1 usage stream   ARGV: 1 the row (a COPY line)
redis.call('XADD', KEYS[1], '*', 'r', ARGV[1])
return 1
