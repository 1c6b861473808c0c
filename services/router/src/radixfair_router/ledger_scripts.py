"""Lua scripts of the Redis ledger: each read-modify-write is one atomic step.

Redis runs a script without interleaving any other command, so two router
replicas charging or refilling the same client never lose an update. The
rules mirror ``LocalLedgerStore`` exactly (see ledger_state.py).

Keys of one client (KEYS in every script):
  1. <prefix>:client:<id>   hash: weight and the counters in CLIENT_COUNTERS
  2. <prefix>:deficit:<id>  hash: worker id -> q[i][w]
  3. <prefix>:vtc:active    sorted set: clients with requests in flight, by VTC counter
  4. <prefix>:clients       set of every client id seen
  5. <prefix>:applied:<r>  hash: which calls of router replica r Redis has run, so a
                            call repeated with the same sequence number (after a
                            timeout left it unknown whether Redis ran it, or a
                            retry on a fresh connection) changes nothing and no
                            charge is booked twice. Each replica numbers its calls
                            1, 2, 3, ...; the hash holds a high-water mark 'hw'
                            (every call up to it has run), the numbers above it
                            that ran out of order ('s<n>', as many as the replica
                            has calls in flight at once), and the last 64
                            admissions' results ('r<n mod 64>'). One key per
                            replica, however many calls: per-call keys reached
                            millions an hour under group commit.
  6. <prefix>:inflight:<r>  hash: client id -> requests in flight through router
                            replica r. A client's ``inflight`` is the sum of these
                            over live replicas; a replica whose lease expired (it
                            died) has its share taken back by RECLAIM, so a kill -9
                            leaves no client active for good.
Numbers go back to Python as strings: Redis would truncate Lua floats to integers.
"""

# Every mutating script ends its ARGV with (seq, floor): this call's sequence number, and the
# replica's lowest number still unsettled (sent and not acknowledged, or not sent yet). Every
# number below the floor is settled on the replica's side, so the mark may move up to it: a
# number that never reached Redis (its caller gave it up) cannot hold the mark back, and a
# Redis that lost the hash (restarted empty) starts again from the floor, not from 1.
_ONCE = """
local seq, floor = tonumber(ARGV[#ARGV - 1]), tonumber(ARGV[#ARGV])
local hw = tonumber(redis.call('HGET', KEYS[5], 'hw') or '0')
if floor - 1 > hw then
  if floor - 1 - hw > 64 then
    for _, field in ipairs(redis.call('HKEYS', KEYS[5])) do
      if string.sub(field, 1, 1) == 's' and tonumber(string.sub(field, 2)) < floor then
        redis.call('HDEL', KEYS[5], field)
      end
    end
  else
    for n = hw + 1, floor - 1 do redis.call('HDEL', KEYS[5], 's' .. n) end
  end
  hw = floor - 1
end
if seq <= hw or redis.call('HEXISTS', KEYS[5], 's' .. seq) == 1 then
  local kept = redis.call('HGET', KEYS[5], 'r' .. (seq % 64))
  if kept then
    kept = cjson.decode(kept)
    if kept[1] == seq then return kept[2] end
  end
  return LOST
end
"""

_MARK = """
if seq == hw + 1 then
  hw = seq
  while redis.call('HEXISTS', KEYS[5], 's' .. (hw + 1)) == 1 do
    hw = hw + 1
    redis.call('HDEL', KEYS[5], 's' .. hw)
  end
else
  redis.call('HSET', KEYS[5], 's' .. seq, '1')
end
redis.call('HSET', KEYS[5], 'hw', hw)
redis.call('PEXPIRE', KEYS[5], 86400000)
"""

# Admission results kept for a repeat (a retry on a fresh connection needs the decision).
_KEEP = "redis.call('HSET', KEYS[5], 'r' .. (seq % 64), cjson.encode({seq, result}))\n"


def _once(body: str, result: str, lost: str, keep: bool = False) -> str:
    """Wraps a script so a repeat of the same sequence number is a no-op.

    A repeat returns the first result where it is still kept (admissions), else ``lost``.
    """
    return (
        _ONCE.replace("LOST", lost)
        + body
        + f"local result = {result}\n"
        + (_KEEP if keep else "")
        + _MARK
        + "return result\n"
    )


# ARGV: client, weight, quantum, mode ("d2lpm" | "fixed"), fallback worker,
# n, then n triples (worker, eligible 0/1, cost) in preference order.
# Returns {chosen worker, q after, refill rounds, vtc after, cost charged,
# 1 if the fallback was taken because no eligible worker had credit}.
_ADMIT = """
local cid, weight, quantum = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local mode, fallback, n = ARGV[4], ARGV[5], tonumber(ARGV[6])
local credit = quantum * weight
redis.call('SADD', KEYS[4], cid)
redis.call('HSET', KEYS[1], 'weight', ARGV[2])
local inflight = tonumber(redis.call('HGET', KEYS[1], 'inflight') or '0')
local vtc = tonumber(redis.call('HGET', KEYS[1], 'vtc') or '0')
if inflight <= 0 then
  -- VTC lift: a client coming back from idle starts at the lowest active counter.
  local lowest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  if lowest[2] ~= nil and tonumber(lowest[2]) > vtc then vtc = tonumber(lowest[2]) end
end
inflight = inflight + 1
local workers, eligible, costs, q, dirty = {}, {}, {}, {}, {}
for i = 1, n do
  local base = 6 + (i - 1) * 3
  workers[i] = ARGV[base + 1]
  eligible[i] = ARGV[base + 2] == '1'
  costs[workers[i]] = tonumber(ARGV[base + 3])
end
-- One read and one write of the deficit hash, not one call per worker: an admit carries
-- every candidate, and Redis runs all routers' scripts one at a time.
if n > 0 then
  local stored = redis.call('HMGET', KEYS[2], unpack(workers))
  for i = 1, n do
    if stored[i] then q[i] = tonumber(stored[i]) else q[i] = credit; dirty[i] = true end
  end
end
local refills = 0
local chosen = fallback
local by_fallback = 1
if mode == 'd2lpm' then
  local function none_positive()
    for i = 1, n do if q[i] > 0 then return false end end
    return true
  end
  while refills < 1000 and none_positive() do
    refills = refills + 1
    for i = 1, n do if q[i] <= 0 then q[i] = q[i] + credit; dirty[i] = true end end
  end
  for i = 1, n do
    if eligible[i] and q[i] > 0 then chosen = workers[i]; by_fallback = 0; break end
  end
end
local cost = costs[chosen] or 0
local q_after = 0
local updates = {}
for i = 1, n do
  if workers[i] == chosen then
    q[i] = q[i] - cost
    if q[i] > credit then q[i] = credit end
    q_after = q[i]
    dirty[i] = true
  end
  if dirty[i] then
    updates[#updates + 1] = workers[i]
    updates[#updates + 1] = tostring(q[i])
  end
end
if #updates > 0 then redis.call('HSET', KEYS[2], unpack(updates)) end
vtc = vtc + cost / weight
redis.call('HSET', KEYS[1], 'vtc', tostring(vtc), 'inflight', tostring(inflight))
redis.call('HINCRBY', KEYS[6], cid, 1)
redis.call('HINCRBYFLOAT', KEYS[1], 'requests', 1)
redis.call('HINCRBYFLOAT', KEYS[1], 'service', cost)
redis.call('ZADD', KEYS[3], vtc, cid)
"""
# A repeat whose result is no longer kept returns false (None in Python): it ran, its decision is lost.
ADMIT = _once(
    _ADMIT,
    "{chosen, tostring(q_after), refills, tostring(vtc), tostring(cost), by_fallback}",
    "false",
    keep=True,
)

# ARGV: client, weight, quantum, worker, service, prompt, cached, completion, finished 0/1,
# requests delta.
# Returns q[i][w] after the charge.
_CHARGE = """
local cid, weight, quantum, worker = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local service = tonumber(ARGV[5])
local credit = quantum * weight
redis.call('SADD', KEYS[4], cid)
redis.call('HSET', KEYS[1], 'weight', ARGV[2])
redis.call('HSETNX', KEYS[2], worker, credit)
local q = tonumber(redis.call('HGET', KEYS[2], worker)) - service
-- A refund may not lift a deficit above one quantum, so no client banks credit.
if q > credit then q = credit end
redis.call('HSET', KEYS[2], worker, tostring(q))
redis.call('HINCRBYFLOAT', KEYS[1], 'service', service)
local vtc = tonumber(redis.call('HINCRBYFLOAT', KEYS[1], 'vtc', service / weight))
redis.call('HINCRBYFLOAT', KEYS[1], 'prompt_tokens', ARGV[6])
redis.call('HINCRBYFLOAT', KEYS[1], 'cached_tokens', ARGV[7])
redis.call('HINCRBYFLOAT', KEYS[1], 'completion_tokens', ARGV[8])
redis.call('HINCRBYFLOAT', KEYS[1], 'requests', ARGV[10])
local inflight = tonumber(redis.call('HGET', KEYS[1], 'inflight') or '0')
-- Only a request this replica still holds ends here: one whose admission Redis lost
-- (restarted empty) or another replica reclaimed (this one's lease lapsed) is not
-- counted off twice.
if ARGV[9] == '1' and tonumber(redis.call('HGET', KEYS[6], cid) or '0') > 0 then
  if redis.call('HINCRBY', KEYS[6], cid, -1) <= 0 then redis.call('HDEL', KEYS[6], cid) end
  inflight = tonumber(redis.call('HINCRBYFLOAT', KEYS[1], 'inflight', -1))
  if inflight < 0 then inflight = 0; redis.call('HSET', KEYS[1], 'inflight', 0) end
end
if inflight > 0 then redis.call('ZADD', KEYS[3], vtc, cid) else redis.call('ZREM', KEYS[3], cid) end
"""
# A repeat returns the deficit as it is now (callers use it for reporting only).
CHARGE = _once(
    _CHARGE,
    "tostring(q)",
    "tostring(redis.call('HGET', KEYS[2], ARGV[4]) or tonumber(ARGV[3]) * tonumber(ARGV[2]))",
)

# Replays a degraded router's journal for one client.
# ARGV: client, weight, quantum, n counters, then (name, delta) pairs,
# then m deficits, then (worker, delta) pairs.
_APPLY = """
local cid, weight, quantum = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local credit = quantum * weight
redis.call('SADD', KEYS[4], cid)
redis.call('HSET', KEYS[1], 'weight', ARGV[2])
local n = tonumber(ARGV[4])
for i = 1, n do
  local name, delta = ARGV[4 + 2 * i - 1], tonumber(ARGV[4 + 2 * i])
  if name == 'inflight' then
    -- As in CHARGE: requests end only against what this replica still holds.
    local mine = tonumber(redis.call('HGET', KEYS[6], cid) or '0')
    if mine + delta < 0 then delta = -mine end
    if delta ~= 0 then
      if redis.call('HINCRBY', KEYS[6], cid, delta) <= 0 then redis.call('HDEL', KEYS[6], cid) end
    end
  end
  if delta ~= 0 then redis.call('HINCRBYFLOAT', KEYS[1], name, delta) end
end
local base = 5 + 2 * n
local m = tonumber(ARGV[base])
for i = 1, m do
  local worker, delta = ARGV[base + 2 * i - 1], tonumber(ARGV[base + 2 * i])
  redis.call('HSETNX', KEYS[2], worker, credit)
  local q = tonumber(redis.call('HGET', KEYS[2], worker)) + delta
  if q > credit then q = credit end
  redis.call('HSET', KEYS[2], worker, tostring(q))
end
local inflight = tonumber(redis.call('HGET', KEYS[1], 'inflight') or '0')
if inflight < 0 then inflight = 0; redis.call('HSET', KEYS[1], 'inflight', 0) end
local vtc = tonumber(redis.call('HGET', KEYS[1], 'vtc') or '0')
if inflight > 0 then redis.call('ZADD', KEYS[3], vtc, cid) else redis.call('ZREM', KEYS[3], cid) end
"""
APPLY = _once(_APPLY, "1", "1")

# Takes back the requests in flight of a replica whose lease expired (the router died).
# KEYS: 1. <prefix>:inflight:<r>, 2. <prefix>:lease:<r>, 3. <prefix>:routers, 4. <prefix>:vtc:active.
# ARGV: replica id, key prefix. Client keys are derived from the prefix inside the script
# (one Redis, not a cluster), since which clients a dead replica held is only known here.
# Returns the number of clients whose count it lowered; 0 and no change if the lease is live.
RECLAIM = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local held = redis.call('HGETALL', KEYS[1])
local touched = 0
for i = 1, #held, 2 do
  local cid, n = held[i], tonumber(held[i + 1])
  local key = ARGV[2] .. ':client:' .. cid
  local inflight = tonumber(redis.call('HGET', key, 'inflight') or '0') - n
  if inflight < 0 then inflight = 0 end
  redis.call('HSET', key, 'inflight', tostring(inflight))
  if inflight <= 0 then redis.call('ZREM', KEYS[4], cid) end
  touched = touched + 1
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], ARGV[1])
return touched
"""

# Renews a replica's lease. KEYS: 1. <prefix>:lease:<r>, 2. <prefix>:routers. ARGV: replica id, ttl ms.
RENEW = """
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""
