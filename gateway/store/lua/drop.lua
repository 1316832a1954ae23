-- drop.lua: drop an org's quota hash that a refused grant came from, and only that one.
--
-- KEYS[1]  the org's quota hash for one period (see reserve.lua for its fields)
-- ARGV[1]  the ready token reserve.lua returned with the refused grant
--
-- The truth refused to record the grant: the hash was built before the last stale mark.
-- Returns 1 when that hash is dropped (the next reserve rebuilds it from the truth), 0 when
-- the hash is gone or is already another load (a newer one, left alone).
if redis.call('HGET', KEYS[1], 'ready') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
