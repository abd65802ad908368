-- Where VMs live: file-scope VMs last for the file, test-scope VMs for
-- their test; provium:vm(name) finds either.
local shared = provium:vm("shared", "default", {memory = "256M"}):boot()

test("a test sees the file-scope VM by name", function(t)
  t:assert_eq(provium:vm("shared"):name(), "shared")
  t:assert_eq(provium:vm("shared"):state(), "booted")
  shared:write_file("/tmp/mark", "left by test 1")
end)

test("state carries over between tests on a file-scope VM", function(t)
  t:assert_eq(shared:read_file("/tmp/mark"), "left by test 1")
end)

local inner
test("a VM declared in a test is shut down when the test ends", function(t)
  inner = provium:vm("inner", "default")
  t:assert_eq(inner:state(), "created")
  inner:boot({memory = "256M", cpus = 1})
  t:assert_eq(inner:profile(), "default")
  t:assert_eq(inner:run("cat /proc/cpuinfo | grep -c ^processor").stdout, "1\n")
end)

test("...and is gone afterwards", function(t)
  t:assert_eq(inner:state(), "shutdown")
  local err = t:assert_raises(function() inner:run("true") end)
  t:assert_contains(err, "vm `inner` is shutdown; run needs a booted VM: a shut-down VM does not start again")
  err = t:assert_raises(function() provium:vm("inner") end)
  t:assert_contains(err, "no vm named `inner`")
end)

test("names cannot shadow the file scope", function(t)
  local err = t:assert_raises(function() provium:vm("shared", "default") end)
  t:assert_contains(err, "already declared at a parent scope (lab `provium`)")
end)

test("wrong-state calls explain themselves", function(t)
  local fresh = provium:vm("fresh", "default")
  local err = t:assert_raises(function() fresh:read_file("/etc/passwd") end)
  t:assert_contains(err, "vm `fresh` is created; read_file needs a booted VM: call vm:boot() first")
  fresh:shutdown()
  t:assert_eq(fresh:state(), "shutdown")
end)
