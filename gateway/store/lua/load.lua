-- load.lua: fill an org's quota hash from the truth, unless someone already has.
--
-- KEYS[1]  the org's quota hash for one period (see reserve.lua for its fields)
-- ARGV[1]  the ready token of this load (reserve.lua returns it with each grant)
-- ARGV[2]  EXPIREAT of the hash, integer epoch seconds
-- ARGV[3..] field, value pairs: used:<meter>, res:<holder>:<meter>, exp:<holder>
--
-- Returns 1 when loaded, 0 when the hash was ready already: two replicas rebuilding at
-- once then count the truth once, and grants made since the first load are kept.

local key = KEYS[1]
if redis.call('HEXISTS', key, 'ready') == 1 then
  return 0
end
redis.call('DEL', key)
redis.call('HSET', key, 'ready', ARGV[1])
for i = 3, #ARGV, 500 do
  redis.call('HSET', key, unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
redis.call('EXPIREAT', key, ARGV[2])
return 1
