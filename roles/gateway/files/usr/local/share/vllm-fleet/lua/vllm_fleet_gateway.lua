-- vllm-fleet gateway logic that nginx's own directives cannot express:
--   * exact (case-sensitive) API key matching;
--   * request caps (n / best_of, a per-client max_tokens ceiling, a per-client body size);
--   * per-client token accounting from the usage vLLM reports, streams included
--     (a stream whose client did not ask for usage gets it from vLLM, and the
--     extra usage event is removed before the client sees it);
--   * per-client token quotas per minute and per day (JSON 429 + Retry-After);
--   * a Prometheus text endpoint for the counters and quotas.
-- Installed by the gateway role; configuration comes from a root-only JSON file
-- read once per (re)load in nginx's master process.
local cjson = require("cjson.safe")

local M = {}

local dict = ngx.shared.vllm_fleet
local conf = { keys = {}, clients = {}, max_n = 16 }

-- Quota windows: fixed UTC windows, keyed by their start.
local WINDOWS = {
  { name = "minute", seconds = 60, field = "quota_minute" },
  { name = "day", seconds = 86400, field = "quota_day" },
}
-- Request fields that bound the generated tokens, per kind of endpoint.
local TOKEN_FIELDS = {
  completions = { "max_tokens" },
  chat = { "max_completion_tokens", "max_tokens" },
  responses = { "max_output_tokens" },
}
-- A non-streamed answer is parsed whole up to this size; larger ones fall back
-- to the usage object at their end.
local WHOLE_BODY_LIMIT = 4 * 1024 * 1024
local TAIL_BYTES = 8192

function M.init(path)
  local f, err = io.open(path, "r")
  if not f then
    error("vllm-fleet: cannot read " .. path .. ": " .. tostring(err))
  end
  local data = cjson.decode(f:read("*a"))
  f:close()
  if type(data) ~= "table" then
    error("vllm-fleet: " .. path .. " is not a JSON object")
  end
  conf = data
  conf.keys = data.keys or {}
  conf.clients = data.clients or {}
  conf.max_n = tonumber(data.max_n) or 16
end

-- The client name for the request's key, "" when missing or unknown.  The
-- scheme is case-insensitive (RFC 9110); the key is compared exactly.
function M.client()
  local header = ngx.var.http_authorization
  if not header then
    return ""
  end
  local scheme, key = header:match("^(%S+) +(%S+) *$")
  if not scheme or scheme:lower() ~= "bearer" then
    return ""
  end
  return conf.keys[key] or ""
end

-- "1" when the request's headers (names and values) exceed limit bytes, else
-- "".  nginx's own header buffers are larger, so an oversized header gets this
-- JSON answer over HTTP/2 too (where nginx itself would reset the connection).
function M.headers_too_large(limit)
  local headers = ngx.req.get_headers(1000, true)
  local total = 0
  for name, value in pairs(headers) do
    if type(value) == "table" then
      for _, v in ipairs(value) do
        total = total + #name + #v + 4
      end
    else
      total = total + #name + #value + 4
    end
  end
  return total > limit and "1" or ""
end

local function json_error(status, message, etype, code)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.say(cjson.encode({ error = { message = message, type = etype, code = code } }))
  return ngx.exit(ngx.HTTP_OK)
end

local function window_start(now, w)
  return now - now % w.seconds
end

local function quota_key(name, w, start)
  return "q\t" .. name .. "\t" .. w.name .. "\t" .. start
end

-- Read the whole request body (it is small: client_body_buffer_size equals
-- client_max_body_size), nil when there is none.
local function request_body()
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  if body then
    return body
  end
  local file = ngx.req.get_body_file()
  if not file then
    return nil
  end
  local f = io.open(file, "rb")
  if not f then
    return nil
  end
  body = f:read("*a")
  f:close()
  return body
end

-- Add top-level members to a JSON object's text without re-encoding what the
-- client sent (re-encoding would turn [] into {} and round numbers).  A later
-- duplicate member wins in vLLM's JSON parser, so these override.
local function append_members(body, members)
  local head = body:match("^(.*)}%s*$")
  if not head then
    return nil
  end
  local parts = {}
  for _, m in ipairs(members) do
    parts[#parts + 1] = cjson.encode(m[1]) .. ":" .. cjson.encode(m[2])
  end
  local sep = head:match("^%s*{%s*$") and "" or ","
  return head .. sep .. table.concat(parts, ",") .. "}"
end

-- Access phase of every proxied API endpoint.  kind: "completions", "chat",
-- "responses" (generation: caps, usage for streams), or "other".
function M.access(kind)
  local name = ngx.var.vllm_client
  if name == "" then
    return ngx.exit(ngx.HTTP_UNAUTHORIZED)
  end
  local client = conf.clients[name] or {}

  local length = tonumber(ngx.var.http_content_length)
  if client.max_body and length and length > client.max_body then
    return ngx.exit(ngx.HTTP_REQUEST_ENTITY_TOO_LARGE)
  end

  local now = ngx.time()
  for _, w in ipairs(WINDOWS) do
    local quota = client[w.field]
    if quota then
      local start = window_start(now, w)
      local used = dict:get(quota_key(name, w, start)) or 0
      if used >= quota then
        dict:incr("r\t" .. name .. "\t" .. w.name, 1, 0)
        ngx.header["Retry-After"] = tostring(start + w.seconds - now)
        return json_error(429, "Token quota per " .. w.name .. " (" .. quota .. " tokens) used up for this API key; "
          .. "retry after the window ends.", "rate_limit_error", "token_quota_exceeded")
      end
    end
  end

  if not conf.accounting or ngx.req.get_method() ~= "POST" then
    return
  end
  local body = request_body()
  if not body then
    return
  end
  if client.max_body and #body > client.max_body then
    return ngx.exit(ngx.HTTP_REQUEST_ENTITY_TOO_LARGE)
  end
  local fields = TOKEN_FIELDS[kind]
  if not fields then
    return
  end
  local req = cjson.decode(body)
  if type(req) ~= "table" or not body:match("^%s*{") then
    return -- vLLM answers a malformed request itself
  end

  for _, field in ipairs({ "n", "best_of" }) do
    local v = req[field]
    if type(v) == "number" and v > conf.max_n then
      return json_error(400, field .. "=" .. v .. " is above this gateway's limit of " .. conf.max_n .. ".",
        "invalid_request_error", "gateway_limit")
    end
  end

  local add = {}
  local ceiling = client.max_tokens
  if ceiling then
    local given = false
    for _, field in ipairs(fields) do
      local v = req[field]
      if type(v) == "number" then
        given = true
        if v > ceiling then
          return json_error(400, field .. "=" .. v .. " is above this API key's ceiling of " .. ceiling
            .. " tokens.", "invalid_request_error", "gateway_limit")
        end
      end
    end
    if not given then
      add[#add + 1] = { fields[1], ceiling }
    end
  end

  -- A stream reports usage only when asked; ask for it, and remember to remove
  -- the extra event.  The Responses API always reports usage.
  if req.stream == true and kind ~= "responses" then
    local options = type(req.stream_options) == "table" and req.stream_options or {}
    if options.include_usage ~= true then
      local merged = {}
      for k, v in pairs(options) do
        merged[k] = v
      end
      merged.include_usage = true
      add[#add + 1] = { "stream_options", merged }
      ngx.ctx.strip_usage = true
    end
  end

  if #add > 0 then
    local rewritten = append_members(body, add)
    if rewritten then
      ngx.req.set_body_data(rewritten)
    else
      ngx.ctx.strip_usage = nil
    end
  end
end

local function record_usage(ctx, usage, model)
  if type(usage) ~= "table" then
    return
  end
  local prompt = tonumber(usage.prompt_tokens or usage.input_tokens)
  local completion = tonumber(usage.completion_tokens or usage.output_tokens) or 0
  if not prompt then
    return
  end
  ctx.prompt, ctx.completion = prompt, completion
  if type(model) == "string" then
    ctx.model = model
  end
end

-- One SSE line: record its usage; false when it must not reach the client.
local function sse_line(ctx, line)
  if not line:find('"usage":{', 1, true) then
    return true
  end
  local payload = line:match("^data: ?(.*)$")
  local event = payload and cjson.decode(payload)
  if type(event) ~= "table" then
    return true
  end
  if type(event.response) == "table" then -- Responses API: response.completed
    record_usage(ctx, event.response.usage, event.response.model)
    return true
  end
  record_usage(ctx, event.usage, event.model)
  local choices = event.choices
  if ctx.strip_usage and type(choices) == "table" and next(choices) == nil then
    ctx.drop_blank = true
    return false
  end
  return true
end

local function filter_sse(ctx, chunk, eof)
  local data = (ctx.pending or "") .. chunk
  local complete, rest = data:match("^(.*\n)(.*)$")
  if not complete then
    complete, rest = "", data
  end
  if eof then
    complete, rest = complete .. rest, ""
  end
  ctx.pending = rest
  if complete == "" or (not complete:find('"usage":{', 1, true) and not ctx.drop_blank) then
    return complete
  end
  local out = {}
  for line, nl in complete:gmatch("([^\n]*)(\n?)") do
    if line == "" and nl == "" then
      break
    end
    if ctx.drop_blank and line:match("^\r?$") then
      ctx.drop_blank = nil
    elseif sse_line(ctx, line) then
      out[#out + 1] = line .. nl
    end
  end
  return table.concat(out)
end

-- Body filter of the proxied API endpoints: read the usage vLLM reports.
function M.body_filter()
  if not conf.accounting then
    return
  end
  local ctx = ngx.ctx
  local chunk, eof = ngx.arg[1] or "", ngx.arg[2]
  if ctx.sse == nil then
    local ctype = ngx.var.upstream_http_content_type or ""
    ctx.sse = ctype:find("text/event-stream", 1, true) ~= nil
    ctx.json = ctype:find("application/json", 1, true) ~= nil
    ctx.parts, ctx.size = {}, 0
  end
  if ctx.sse then
    ngx.arg[1] = filter_sse(ctx, chunk, eof)
  elseif ctx.json then
    ctx.size = ctx.size + #chunk
    if ctx.size <= WHOLE_BODY_LIMIT then
      ctx.parts[#ctx.parts + 1] = chunk
    else
      if not ctx.head then
        ctx.head = table.concat(ctx.parts):sub(1, 1024)
      end
      ctx.parts = { ((ctx.tail or "") .. chunk):sub(-TAIL_BYTES) }
      ctx.tail = ctx.parts[1]
    end
    if eof then
      if not ctx.head then
        local answer = cjson.decode(table.concat(ctx.parts))
        if type(answer) == "table" then
          record_usage(ctx, answer.usage, answer.model)
        end
      else
        local tail = ctx.tail or ""
        local usage = tail:match('.*"usage":(%b{})')
        record_usage(ctx, usage and cjson.decode(usage), ctx.head:match('"model":"([^"]*)"'))
      end
      ctx.parts = nil
    end
  end
  if eof and ctx.prompt then
    ngx.var.vllm_prompt_tokens = ctx.prompt
    ngx.var.vllm_completion_tokens = ctx.completion
    ngx.var.vllm_model = ctx.model or ""
  end
end

local function label(value)
  return (tostring(value):sub(1, 128):gsub('[^%w%._:/%-]', "_"))
end

-- Log phase: count the tokens and charge the quotas.
function M.log()
  local ctx = ngx.ctx
  if not ctx.prompt then
    return
  end
  local name = ngx.var.vllm_client
  local model = label(ctx.model or "unknown")
  dict:incr("t\t" .. name .. "\t" .. model .. "\tprompt", ctx.prompt, 0)
  dict:incr("t\t" .. name .. "\t" .. model .. "\tcompletion", ctx.completion, 0)
  local client = conf.clients[name] or {}
  local now = ngx.time()
  for _, w in ipairs(WINDOWS) do
    if client[w.field] then
      dict:incr(quota_key(name, w, window_start(now, w)), ctx.prompt + ctx.completion, 0, w.seconds + 60)
    end
  end
end

-- One metric family: its HELP and TYPE lines, then its samples.
local function family(out, name, kind, help, samples)
  out[#out + 1] = "# HELP " .. name .. " " .. help .. "\n"
  out[#out + 1] = "# TYPE " .. name .. " " .. kind .. "\n"
  for _, line in ipairs(samples) do
    out[#out + 1] = line
  end
end

-- Prometheus text format (0.0.4) of the counters and quotas.
function M.metrics()
  local out, tokens = {}, {}
  for _, key in ipairs(dict:get_keys(0)) do
    local client, model, kind = key:match("^t\t([^\t]*)\t([^\t]*)\t([^\t]*)$")
    if client then
      tokens[#tokens + 1] = string.format('vllm_fleet_gateway_tokens_total{client="%s",model="%s",type="%s"} %d\n',
        client, model, kind, dict:get(key) or 0)
    end
  end
  family(out, "vllm_fleet_gateway_tokens_total", "counter",
    "Tokens vLLM reported in usage for requests through this gateway.", tokens)
  -- Every client with a quota has all three series from the start (a counter
  -- that appears at its first increment hides that increment from increase()).
  local rejected, quota, used = {}, {}, {}
  local now = ngx.time()
  for name, client in pairs(conf.clients) do
    for _, w in ipairs(WINDOWS) do
      if client[w.field] then
        local labels = string.format('{client="%s",window="%s"} ', name, w.name)
        rejected[#rejected + 1] = "vllm_fleet_gateway_token_quota_rejected_total" .. labels
          .. (dict:get("r\t" .. name .. "\t" .. w.name) or 0) .. "\n"
        quota[#quota + 1] = "vllm_fleet_gateway_token_quota_tokens" .. labels .. client[w.field] .. "\n"
        used[#used + 1] = "vllm_fleet_gateway_token_quota_used_tokens" .. labels
          .. (dict:get(quota_key(name, w, window_start(now, w))) or 0) .. "\n"
      end
    end
  end
  family(out, "vllm_fleet_gateway_token_quota_rejected_total", "counter",
    "Requests refused because a token quota was used up.", rejected)
  family(out, "vllm_fleet_gateway_token_quota_tokens", "gauge", "A client's token quota per window.", quota)
  family(out, "vllm_fleet_gateway_token_quota_used_tokens", "gauge",
    "Tokens charged to a client in the current window.", used)
  ngx.header["Content-Type"] = "text/plain; version=0.0.4"
  ngx.print(table.concat(out))
end

return M
