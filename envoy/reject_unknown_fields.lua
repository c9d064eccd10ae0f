-- Refuses REST bodies that carry JSON fields the target message does not define.
--
-- Envoy's gRPC-JSON transcoder silently drops unknown fields, so a client's typo or a field it
-- expects us to act on would vanish without a word. This filter walks the JSON body against the
-- field names of the request message (generated from the descriptor set by `make protos`,
-- which inlines ROUTES and MESSAGES below) and answers 400 naming the first unknown field.
-- Malformed JSON is left to the transcoder, which refuses it with its own message.

-- @GENERATED_SCHEMA@

-- Bodies declared larger than the edge's limit are left to the transcoder, which answers 413;
-- buffering them here would only reset the connection. Rendered by eventpipe.stack.edge.
local MAX_BODY_BYTES = tonumber("@MAX_BODY_BYTES@") or 4194304

local function skip_ws(s, i)
  return s:find("[^ \t\r\n]", i) or (#s + 1)
end

local function read_string(s, i) -- s:sub(i, i) == '"'; returns the raw content and the next index
  local j = i + 1
  while true do
    local k = s:find('["\\]', j)
    if not k then error("syntax") end
    if s:sub(k, k) == '"' then return s:sub(i + 1, k - 1), k + 1 end
    j = k + 2
  end
end

local function resolve(child)
  if type(child) == "string" then return MESSAGES[child] end
  if type(child) == "table" then return child end
  return nil -- a scalar or a free-form value: nothing to check inside
end

local walk

local function walk_object(s, i, node, path)
  i = skip_ws(s, i + 1)
  if s:sub(i, i) == "}" then return i + 1 end
  while true do
    if s:sub(i, i) ~= '"' then error("syntax") end
    local key
    key, i = read_string(s, i)
    i = skip_ws(s, i)
    if s:sub(i, i) ~= ":" then error("syntax") end
    i = skip_ws(s, i + 1)
    local child_path = path == "" and key or (path .. "." .. key)
    local child = nil
    if node ~= nil then
      if node.__map ~= nil then
        child = node.__map
        child_path = path .. "[" .. key .. "]"
      else
        child = node[key]
        if child == nil then error({ unknown = child_path }) end
      end
    end
    i = skip_ws(s, walk(s, i, resolve(child), child_path))
    local c = s:sub(i, i)
    if c == "," then
      i = skip_ws(s, i + 1)
    elseif c == "}" then
      return i + 1
    else
      error("syntax")
    end
  end
end

walk = function(s, i, node, path)
  local c = s:sub(i, i)
  if c == "{" then return walk_object(s, i, node, path) end
  if c == "[" then
    i = skip_ws(s, i + 1)
    if s:sub(i, i) == "]" then return i + 1 end
    local n = 0
    while true do
      i = skip_ws(s, walk(s, i, node, path .. "[" .. n .. "]"))
      n = n + 1
      local d = s:sub(i, i)
      if d == "," then
        i = skip_ws(s, i + 1)
      elseif d == "]" then
        return i + 1
      else
        error("syntax")
      end
    end
  end
  if c == '"' then
    local _, after = read_string(s, i)
    return after
  end
  local j = s:find("[,}%] \t\r\n]", i) or (#s + 1)
  if j == i then error("syntax") end
  return j
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local method = headers:get(":method")
  if method ~= "POST" and method ~= "PUT" and method ~= "PATCH" then return end
  local path = (headers:get(":path") or ""):gsub("%?.*$", "")
  local root = nil
  for _, route in ipairs(ROUTES) do
    if route[1] == method and path:match(route[2]) then
      root = route[3]
      break
    end
  end
  if root == nil then return end
  local declared = tonumber(headers:get("content-length") or "")
  if declared ~= nil and declared > MAX_BODY_BYTES then return end
  local body = handle:body()
  if body == nil or body:length() == 0 then return end
  local text = body:getBytes(0, body:length())
  local start = skip_ws(text, 1)
  local ok, err = pcall(walk, text, start, resolve(root), "")
  if not ok and type(err) == "table" and err.unknown then
    local field = err.unknown:gsub('[%c"\\]', "?")
    handle:respond(
      { [":status"] = "400", ["content-type"] = "application/json" },
      '{"code":3,"message":"unknown field \\"' .. field .. '\\": not part of the request message",'
        .. '"details":[{"@type":"type.googleapis.com/google.rpc.BadRequest","field_violations":'
        .. '[{"field":"' .. field .. '","description":"unknown field"}]}]}'
    )
  end
end
