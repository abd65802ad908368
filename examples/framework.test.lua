-- The framework's globals beyond `test`: `json`, `todo`, and the test's
-- own `t.meta`.

test("json round-trips what a test writes to and reads from a guest", function(t)
  local vm = provium:vm("j", "default"):boot()
  local config = {name = "svc", ports = {80, 443}, debug = false, limits = {cpu = 1.5}}
  vm:write_file("/tmp/config.json", json.encode(config))
  -- The guest's own tools see valid JSON (busybox has no jq: check by shape).
  t:assert_contains(vm:read_file("/tmp/config.json"), '"ports":[80,443]')
  local back = json.decode(vm:read_file("/tmp/config.json"))
  t:assert_eq(back.name, "svc")
  t:assert_eq(back.ports[2], 443)
  t:assert_eq(back.debug, false)
  t:assert_eq(back.limits.cpu, 1.5)
end)

test("json follows the reference's rules", function(t)
  t:assert_eq(json.encode({[1] = "a", [3] = "c"}), '["a",null,"c"]')
  t:assert_eq(json.encode({[2] = true, a = 1}), '{"2":true,"a":1}')
  t:assert_eq(json.decode("18446744073709551615"), -1)
  local arr = json.decode("[1, null, 3]")
  t:assert_eq(arr[3], 3)
  t:assert_eq(arr[2], nil)
  t:assert_contains(t:assert_raises(function() json.decode("{oops}") end), "json.decode: key must be a string at line 1, column 2")
  t:assert_contains(t:assert_raises(function() local c = {}; c.c = c; json.encode(c) end), "a cycle")
end)

test("t.meta is the test's meta table", {area = "framework", tags = {"fast"}}, function(t)
  t:assert_eq(t.meta.area, "framework")
  t:assert_eq(t.meta.tags[1], "fast")
end)

test("t.meta is an empty table without one", function(t)
  t:assert_eq(type(t.meta), "table")
  t:assert_eq(next(t.meta), nil)
end)

todo("a test still to be written is reported, not run", function(t)
  error("a todo body never runs")
end)

test("meta.todo marks a test the same way", {todo = "waiting for the fix"}, function(t)
  error("a todo body never runs")
end)
