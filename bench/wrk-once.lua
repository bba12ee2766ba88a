-- wrk script: GET every path of the file named by the PATHS environment
-- variable exactly once, over all threads and connections together, then
-- stop. Thread i (of T) takes paths i, i+T, i+2T, ... in the file's order;
-- its connections take them one after another, each the thread's next
-- path when its previous answer is in, so no path is requested twice and
-- every connection stays busy until the thread's share runs out.
--
-- Usage: PATHS=paths.txt DONE=/tmp/done wrk -tT -cC -d60s -s wrk-once.lua URL -- C T
--   C and T repeat wrk's -c and -t (a script cannot read them). wrk itself
--   runs until -d; when thread i has all its answers it stops and creates
--   the file "$DONE.i", so the caller can interrupt wrk (SIGINT) once all
--   T files exist. done() then prints one line:
--     once: requests N answers N status_errors N socket_errors N timeouts N bytes N elapsed_s S rate R
--   requests counts the requests sent, answers the complete answers,
--   status_errors those with a status of 400 or more, socket_errors
--   failed connects, reads and writes, timeouts the answers slower than
--   wrk's -T (counted, still read); bytes is every byte
--   read, headers included, for the caller to check against the answers
--   it expects; elapsed runs from the first request sent to the last
--   answer received, over all threads (CLOCK_MONOTONIC); rate is
--   requests / elapsed.
--
-- The script defines no response(): with one, wrk would hand every body
-- to Lua as a string, which for images of 100 KB and more costs wrk about
-- five times its CPU per request (465 against 89 us over a corpus of
-- 5 KB to 400 KB images), more than the store spends.
--
-- How it stops: wrk calls delay() before each request of a connection,
-- and once more after a connection's last answer when that is the end.
-- The first n calls of a thread (n = its share) return 0 and are each
-- followed by one request(); every later call parks its connection for
-- an hour. Call n + c (c = connections per thread) is the last
-- connection's, made after all the thread's answers: the thread stops.
-- wrk also calls request() once before the run, to check the request it
-- builds (thread 1 only); that call takes no path.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } wrk_once_timespec;
int clock_gettime(int clk, wrk_once_timespec *ts);
]]
local ts = ffi.new("wrk_once_timespec")
local function now()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

local mine = {} -- this thread's paths
local conns     -- connections of this thread
local calls = 0 -- delay() calls
local taken = 0 -- paths requested
-- Read back by done() (globals, for thread:get).
sent, t0, t1 = 0, 0, 0

function init(args)
  local c, t = tonumber(args[1]), tonumber(args[2])
  if not c or not t or t < 1 or c < t then
    error("wrk-once.lua: give wrk's -c and -t after --, e.g. -- 16 2")
  end
  conns = math.floor(c / t)
  local f = assert(io.open(os.getenv("PATHS") or "paths.txt"))
  local i = 0
  for line in f:lines() do
    if i % t == id then
      mine[#mine + 1] = line
    end
    i = i + 1
  end
  f:close()
end

function delay()
  calls = calls + 1
  if calls == 1 then
    t0 = now()
  end
  if calls <= #mine then
    return 0
  end
  if calls == #mine + conns then
    t1 = now()
    local done = os.getenv("DONE")
    if done then
      assert(io.open(done .. "." .. id, "w")):close()
    end
    wrk.thread:stop()
  end
  return 3600 * 1000
end

function request()
  if calls == 0 then
    -- wrk's check of the request before the run.
    return wrk.format("GET", mine[1] or "/")
  end
  taken = taken + 1
  sent = taken
  return wrk.format("GET", mine[taken])
end

function done(summary, latency, requests)
  local n, first, last = 0, math.huge, 0
  for _, t in ipairs(threads) do
    n = n + t:get("sent")
    local a, z = t:get("t0"), t:get("t1")
    if a > 0 and a < first then first = a end
    if z == 0 then last = math.huge elseif z > last then last = z end
  end
  local e = summary.errors
  local line = string.format("once: requests %d answers %d status_errors %d socket_errors %d timeouts %d bytes %.0f",
    n, summary.requests, e.status, e.connect + e.read + e.write, e.timeout, summary.bytes)
  local elapsed = last - first
  if elapsed ~= elapsed or elapsed == math.huge then
    -- A thread did not finish (wrk's -d ran out first).
    print(line .. " elapsed_s unfinished rate 0")
    return
  end
  print(line .. string.format(" elapsed_s %.4f rate %.1f", elapsed, n / elapsed))
end
