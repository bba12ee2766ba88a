-- wrk script: request the image paths listed in the file named by the
-- PATHS environment variable (one per line, as `haybale bench paths`
-- writes them), each thread cycling from its own random start.
local paths = {}
local i = 0

init = function(args)
  local f = assert(io.open(os.getenv("PATHS") or "paths.txt"))
  for line in f:lines() do
    paths[#paths + 1] = line
  end
  f:close()
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
  i = math.random(#paths)
end

request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
