-- Feeds wrk pre-signed task callbacks from a file (one "requestID<TAB>createTs<TAB>sign<TAB>body"
-- per line), each thread its own share, so no request is sent twice.
local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local path, uuid, nthreads = args[1], args[2], tonumber(args[3])
  requests = {}
  local n = 0
  for line in io.lines(path) do
    if n % nthreads == id then
      local rid, ts, sign, body = line:match("([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)")
      local headers = {
        ["requestID"] = rid, ["uuid"] = uuid, ["createTs"] = ts, ["sign"] = sign,
        ["Content-Type"] = "application/json",
      }
      table.insert(requests, wrk.format("POST", "/api/v3/taskCallback", headers, body))
    end
    n = n + 1
  end
  index = 0
end

function request()
  index = index + 1
  if index > #requests then
    index = 1  -- ran out: later sends are duplicates (bench with a longer file)
  end
  return requests[index]
end
