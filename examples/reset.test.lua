-- provium.reset_between_tests: the file's VMs are snapshotted after this top
-- level runs and restored after every test, so no test sees another's
-- leftovers.

provium.reset_between_tests = true
local vm = provium:vm("v", "default"):boot()
vm:write_file("/etc/motd", "baseline\n")
local spare = provium:vm("spare", "default", {memory = "256M"}) -- declared, not booted

test("a test changes the guest", function(t)
  t:assert_eq(vm:read_file("/etc/motd"), "baseline\n")
  vm:write_file("/etc/motd", "changed by the first test\n")
  vm:run("touch /tmp/leftover")
end)

test("the next test starts from the baseline again", function(t)
  t:assert_eq(vm:read_file("/etc/motd"), "baseline\n")
  t:assert(not vm:run("test -e /tmp/leftover"):ok(), "/tmp/leftover should be gone")
end)

test("even a guest a test shut down comes back", function(t)
  vm:shutdown()
end)

test("...like this", function(t)
  t:assert_eq(vm:state(), "booted")
  t:assert_eq(vm:read_file("/etc/motd"), "baseline\n")
end)

test("a test may boot a VM the baseline only declared", function(t)
  spare:boot()
  spare:run("true"):assert_ok()
end)

test("...and the next test finds it created again", function(t)
  t:assert_eq(spare:state(), "created")
end)
