-- Repeatable guests: a seeded hardware RNG, a chosen wall-clock start, and
-- files placed in the initramfs before init runs.

local boots = 0
local function hwrng(seed)
  boots = boots + 1
  local vm = provium:vm("rng" .. boots, "default", {rng_seed = seed}):boot()
  local bytes = vm:run("head -c 64 /dev/hwrng | md5sum").stdout
  vm:shutdown()
  return bytes
end

test("the same rng_seed gives the same hardware random bytes", function(t)
  local a, b, c = hwrng(42), hwrng(42), hwrng(43)
  t:assert_eq(a, b, "same seed, same bytes")
  t:assert_neq(a, c, "another seed, other bytes")
end)

test("initial_time sets the guest's wall clock", function(t)
  local vm = provium:vm("clock", "default", {initial_time = 1700000000}):boot()
  local now = tonumber(vm:run("date +%s").stdout)
  t:assert(math.abs(now - 1700000000) <= 2, "date +%s = " .. now)
end)

test("files are in place before init runs", function(t)
  local vm = provium:vm("files", "default"):boot({files = {
    {path = "/etc/test.conf", content = "key=value\n"},
    {path = "/opt/tool/run.sh", content = "#!/bin/sh\necho ran\n", mode = 0x1ed}, -- 0755
  }})
  t:assert_eq(vm:read_file("/etc/test.conf"), "key=value\n")
  t:assert_eq(vm:run("/opt/tool/run.sh").stdout, "ran\n")
  local err = t:assert_raises(function()
    provium:vm("bad", "default", {files = {{path = "/etc/../x", content = ""}}})
  end)
  t:assert_contains(err, "without `.` or `..`")
end)

test("restores of a seeded snapshot read the same hardware random bytes", function(t)
  local vm = provium:vm("seeded", "default", {rng_seed = 7}):boot()
  local s = vm:snapshot()
  local seen = {}
  for i = 1, 2 do
    vm:shutdown()
    vm:restore(s)
    seen[i] = vm:run("head -c 32 /dev/hwrng | md5sum").stdout
  end
  t:assert_eq(seen[1], seen[2])
end)
