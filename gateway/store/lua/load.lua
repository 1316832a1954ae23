-- load.lua: fill an org's quota hash from a snapshot of the truth, unless someone already has.
--
-- KEYS[1]   the org's quota hash for one period (see reserve.lua for its fields)
-- KEYS[2..] the markers {prefix}:{org}:b:<batch_id> of every batch the snapshot counts
-- ARGV[1]   the fence (fence.lua) that was up before the snapshot was read
-- ARGV[2]   the ready token of this load (reserve.lua returns it with each grant)
-- ARGV[3]   EXPIREAT of the hash, integer epoch seconds
-- ARGV[4]   seconds a batch marker lives (as in apply.lua)
-- ARGV[5..] field, value pairs: used:<meter>, res:<holder>:<meter>, exp:<holder>
--
-- Returns 1 when loaded, and then marks every batch of the snapshot as applied: a replay
-- of one of them must not count it again. Returns 0 when the hash was ready already (two
-- replicas rebuilding at once count the truth once, and grants made since the first load
-- are kept), and -1 when the snapshot may be stale: the fence is gone (Redis lost the
-- hash again, or keep_grant.lua voided it), or a batch was applied meanwhile
-- (an applied:<marker> field, see apply.lua) that the snapshot does not count.

local key = KEYS[1]
if redis.call('HEXISTS', key, 'ready') == 1 then
  return 0
end
if redis.call('HGET', key, 'loading') ~= ARGV[1] then
  return -1
end
local counted = {}
for i = 2, #KEYS do
  counted[KEYS[i]] = true
end
for _, name in ipairs(redis.call('HKEYS', key)) do
  if string.sub(name, 1, 8) == 'applied:' and not counted[string.sub(name, 9)] then
    return -1
  end
end

redis.call('DEL', key)
redis.call('HSET', key, 'ready', ARGV[2])
for i = 5, #ARGV, 500 do
  redis.call('HSET', key, unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
redis.call('EXPIREAT', key, ARGV[3])
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], '1', 'EX', ARGV[4])
end
return 1
