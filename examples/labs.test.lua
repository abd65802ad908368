-- Labs: declaring VMs and booting them together, sub-labs that keep names
-- apart, whole-lab snapshots, and the file-scope config keys.

provium.timeout = "2m" -- the default limit of every test in this file
local a = provium:vm("a", "default", {memory = "256M"})
local b = provium:vm("b", "default", {memory = "256M"})
provium:boot() -- boots a and b in parallel
local root = provium -- inside a test, `provium` is the test's own scope

test("provium:boot() booted every declared VM", function(t)
  t:assert_eq(a:state(), "booted")
  t:assert_eq(provium.b:state(), "booted")
  a:run("true"):assert_ok()
  b:run("true"):assert_ok()
  t:assert_eq(provium.timeout, 120)
  t:assert_eq(provium.reset_between_tests, false)
end)

test("a test's scope falls through to the file root", function(t)
  t:assert_eq(provium:name(), "test:a test's scope falls through to the file root")
  t:assert_eq(provium:vm("a"):name(), "a")
  t:assert_eq(provium.nothing_here, nil)
  local err = t:assert_raises(function() provium:vm("a", "default") end)
  t:assert_contains(err, 'provium:vm("a", …): name already declared at a parent scope (lab `provium`)')
end)

test("sub-labs keep their own names and boot together", function(t)
  local dc1 = provium:lab("dc1")
  local dc2 = provium:lab("dc2")
  dc1:vm("web", "default", {memory = "256M"})
  dc2:vm("web", "default", {memory = "256M"}) -- same name, different lab
  dc1:boot()
  dc2:boot()
  dc1.web:write_file("/tmp/who", "dc1")
  dc2.web:write_file("/tmp/who", "dc2")
  t:assert_eq(dc1.web:read_file("/tmp/who"), "dc1")
  t:assert_eq(dc2.web:read_file("/tmp/who"), "dc2")
  t:assert_eq(dc1.a, nil, "a sub-lab does not see the file root")
  t:assert_eq(table.concat(provium:sub_lab_names(), ","), "dc1,dc2")
end)

local kept
test("a lab snapshot captures every VM of the lab at once", function(t)
  local cluster = provium:lab("cluster")
  local x = cluster:vm("x", "default", {memory = "256M"})
  local y = cluster:vm("y", "default", {memory = "256M"})
  cluster:boot()
  x:write_file("/tmp/v", "x1")
  y:write_file("/tmp/v", "y1")
  local snap = cluster:snapshot()
  t:assert(snap:size() > 0)
  x:write_file("/tmp/v", "x2")
  y:shutdown()
  cluster:restore(snap)
  t:assert_eq(x:read_file("/tmp/v"), "x1")
  t:assert_eq(y:read_file("/tmp/v"), "y1")
  kept = cluster
end)

test("sub-labs of a test close with it", function(t)
  t:assert_eq(kept.x, nil, "the test's sub-lab was emptied when its test ended")
end)

test("pause and resume a whole lab", function(t)
  provium:pause() -- the test's scope has no VMs of its own: nothing happens
  t:assert_eq(a:state(), "booted")
  root:pause()
  t:assert_eq(a:state(), "paused")
  t:assert_eq(b:state(), "paused")
  root:resume()
  a:run("true"):assert_ok()
end)

test("only known keys can be set on provium", function(t)
  local err = t:assert_raises(function() provium.retries = 3 end)
  t:assert_contains(err, "cannot set `provium.retries`: not a recognised file-scope config key")
end)
