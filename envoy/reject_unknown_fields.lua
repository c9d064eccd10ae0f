-- Refuses REST bodies that carry JSON fields the target message does not define.
--
-- Envoy's gRPC-JSON transcoder silently drops unknown fields, so a client's typo or a field it
-- expects us to act on would vanish without a word. This filter walks the JSON body against the
-- field names of the request message (generated from the descriptor set by `make protos`,
-- which inlines ROUTES and MESSAGES below) and answers 400 naming the first unknown field.
-- Malformed JSON is left to the transcoder, which refuses it with its own message.

-- @GENERATED_SCHEMA@

-- The buffer filter in front holds the whole body (up to the REST body limit, 413 past it), so
-- this filter always sees all of it.

local function skip_ws(s, i)
  return s:find("[^ \t\r\n]", i) or (#s + 1)
end

local SIMPLE_ESCAPES = {
  ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t",
}
local REPLACEMENT_CHARACTER = "\239\191\189" -- U+FFFD, for a lone surrogate

local function utf8_char(code)
  if code < 0x80 then return string.char(code) end
  if code < 0x800 then
    return string.char(0xC0 + math.floor(code / 0x40), 0x80 + code % 0x40)
  end
  if code < 0x10000 then
    return string.char(
      0xE0 + math.floor(code / 0x1000), 0x80 + math.floor(code / 0x40) % 0x40, 0x80 + code % 0x40
    )
  end
  return string.char(
    0xF0 + math.floor(code / 0x40000), 0x80 + math.floor(code / 0x1000) % 0x40,
    0x80 + math.floor(code / 0x40) % 0x40, 0x80 + code % 0x40
  )
end

local function hex4(s, i)
  local digits = s:sub(i, i + 3)
  if not digits:match("^%x%x%x%x$") then error("syntax") end
  return tonumber(digits, 16)
end

-- Reads the JSON string at s[i] == '"'. Returns its decoded value when `decode` is true (JSON
-- keys: "even\u0074s" is the field events) and the index after the closing quote. A lone
-- surrogate decodes to U+FFFD, so it can only ever name an unknown field.
local function read_string(s, i, decode)
  local parts = {}
  local j = i + 1
  while true do
    local k = s:find('["\\]', j)
    if not k then error("syntax") end
    if decode then parts[#parts + 1] = s:sub(j, k - 1) end
    if s:sub(k, k) == '"' then return decode and table.concat(parts) or nil, k + 1 end
    local escape = s:sub(k + 1, k + 1)
    if escape == "u" then
      local code = hex4(s, k + 2)
      j = k + 6
      if code >= 0xD800 and code <= 0xDBFF and s:sub(j, j + 1) == "\\u" then
        local low = hex4(s, j + 2)
        if low >= 0xDC00 and low <= 0xDFFF then
          code = 0x10000 + (code - 0xD800) * 0x400 + (low - 0xDC00)
          j = j + 6
        end
      end
      if decode then
        local lone = code >= 0xD800 and code <= 0xDFFF
        parts[#parts + 1] = lone and REPLACEMENT_CHARACTER or utf8_char(code)
      end
    else
      local char = SIMPLE_ESCAPES[escape]
      if char == nil then error("syntax") end
      if decode then parts[#parts + 1] = char end
      j = k + 2
    end
  end
end

-- The field path as a JSON string: quotes, backslashes and control characters escaped, and
-- bytes that are not UTF-8 replaced, so the reply is valid JSON whatever the key held.
local function json_string(text)
  local out, i, n = {}, 1, #text
  while i <= n do
    local c = text:byte(i)
    local len = (c < 0x80 and 1) or (c >= 0xC2 and c <= 0xDF and 2)
      or (c >= 0xE0 and c <= 0xEF and 3) or (c >= 0xF0 and c <= 0xF4 and 4) or 0
    local valid = len > 0 and i + len - 1 <= n
    for k = 1, len - 1 do
      local b = valid and text:byte(i + k)
      valid = valid and b >= 0x80 and b <= 0xBF
    end
    if not valid then
      out[#out + 1] = REPLACEMENT_CHARACTER
      i = i + 1
    elseif c < 0x20 or c == 0x22 or c == 0x5C then
      out[#out + 1] = string.format("\\u%04x", c)
      i = i + 1
    else
      out[#out + 1] = text:sub(i, i + len - 1)
      i = i + len
    end
  end
  return '"' .. table.concat(out) .. '"'
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
    key, i = read_string(s, i, true)
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
    local _, after = read_string(s, i, false)
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
  local body = handle:body()
  if body == nil or body:length() == 0 then return end
  local text = body:getBytes(0, body:length())
  local start = skip_ws(text, 1)
  local ok, err = pcall(walk, text, start, resolve(root), "")
  if not ok and type(err) == "table" and err.unknown then
    -- The shape of every other 400: google.rpc.Status with a BadRequest field violation, as the
    -- transcoder renders a service's INVALID_ARGUMENT (every primitive field printed, so the
    -- empty `reason` too). The metadata tells local_reply_config to keep this body as it is.
    local field = json_string(err.unknown)
    local description = "unknown field, not part of the request message"
    local message = json_string(err.unknown .. ": " .. description)
    handle:streamInfo():dynamicMetadata():set("eventpipe.edge", "json_reply", true)
    handle:respond(
      { [":status"] = "400", ["content-type"] = "application/json" },
      '{"code":3,"message":' .. message .. ',"details":[{"@type":'
        .. '"type.googleapis.com/google.rpc.BadRequest","field_violations":[{"field":'
        .. field .. ',"description":"' .. description .. '","reason":""}]}]}'
    )
  end
end
