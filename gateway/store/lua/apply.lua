-- apply.lua: apply one usage batch to an org's quota hash, once.
--
-- KEYS[1]  the org's quota hash for one period (see reserve.lua for its fields)
-- KEYS[2]  the batch marker {prefix}:{org}:b:{batch_id}
-- ARGV[1]  holder
-- ARGV[2]  seconds the marker lives
-- ARGV[3]  a JSON object of meter -> delta (a decimal string) added to used:<meter>
-- ARGV[4]  a JSON object of meter -> delta added to res:<holder>:<meter>, clamped at 0;
--          a missing field stays missing (the reservation expired or was released)
-- (Two JSON arguments, not a pair of arguments a delta: encoding arguments was most of a
-- flush's client CPU.)
--
-- Returns 1 when applied, 0 when the marker existed or the hash is not loaded (the next
-- load reads the truth, which already holds this batch). Either way the marker is set.
-- While a rebuild is under way (a fence, see fence.lua) the batch is noted in the hash
-- as applied:<marker>: load.lua refuses a snapshot that does not count it.

local quota, marker = KEYS[1], KEYS[2]
if redis.call('EXISTS', marker) == 1 then
  return 0
end
redis.call('SET', marker, '1', 'EX', ARGV[2])
if redis.call('HEXISTS', quota, 'ready') == 0 then
  if redis.call('HEXISTS', quota, 'loading') == 1 then
    redis.call('HSET', quota, 'applied:' .. marker, '1')
  end
  return 0
end

local holder = ARGV[1]
for meter, delta in pairs(cjson.decode(ARGV[3])) do
  redis.call('HINCRBY', quota, 'used:' .. meter, delta)
end
for meter, delta in pairs(cjson.decode(ARGV[4])) do
  local field = 'res:' .. holder .. ':' .. meter
  local current = redis.call('HGET', quota, field)
  if current then
    local amount = math.max(0, tonumber(current) + tonumber(delta))
    redis.call('HSET', quota, field, string.format('%d', amount))
  end
end
return 1
