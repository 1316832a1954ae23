-- fence.lua: start rebuilding an org's quota hash; the load must still find this fence.
--
-- KEYS[1]  the org's quota hash for one period (see reserve.lua for its fields)
-- ARGV[1]  a new random fence, put up unless one is up already
-- ARGV[2]  EXPIREAT of the hash, integer epoch seconds
--
-- Returns false when the hash is ready (nothing to rebuild), else the fence to load under:
-- the one already up, so that replicas rebuilding at once share it.
--
-- The rebuild reads the truth only after this call. A truth write whose Redis step then
-- finds no hash is in that read; one whose step finds the fence without `ready` voids
-- the fence (keep_grant.lua) or is checked by the load (apply.lua, load.lua), so a load
-- never installs a read older than a write Redis has already seen.

local key = KEYS[1]
if redis.call('HEXISTS', key, 'ready') == 1 then
  return false
end
if redis.call('HSETNX', key, 'loading', ARGV[1]) == 1 then
  redis.call('EXPIREAT', key, ARGV[2])
end
return redis.call('HGET', key, 'loading')
