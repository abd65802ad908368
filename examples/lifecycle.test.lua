-- A VM's life: pause and resume, warm reset, the ACPI power button, its
-- clock, and what every wrong-state call says.

test("a created VM refuses what needs a running one", function(t)
  local vm = provium:vm("fresh", "default")
  t:assert_eq(vm:cid(), nil)
  t:assert_contains(t:assert_raises(function() vm:reset() end), "vm `fresh`: VM not booted; call vm:boot() first (cannot reset)")
  t:assert_contains(t:assert_raises(function() vm:pause() end), "(cannot pause)")
end)

test("pause freezes the guest clock; resume thaws it", function(t)
  local vm = provium:vm("p", "default"):boot()
  t:assert(vm:cid() ~= nil)
  local uptime = function() return tonumber(vm:run("cut -d' ' -f1 /proc/uptime").stdout) end
  local host_before, guest_before = os.time(), uptime()
  vm:pause()
  t:assert_eq(vm:state(), "paused")
  t:assert_contains(t:assert_raises(function() vm:run("true") end), "VM is paused; use resume()")
  os.execute("sleep 4")
  vm:resume()
  t:assert_eq(vm:state(), "booted")
  local guest = uptime() - guest_before
  local host = os.time() - host_before
  -- The host saw at least 4 s go by; the guest missed the paused part.
  t:assert(guest < host - 2.5, string.format("guest time ran while paused: guest %.2f s, host %d s", guest, host))
end)

test("reset is a warm reboot: the agent comes back, /tmp is fresh", function(t)
  local vm = provium:vm("r", "default"):boot()
  vm:write_file("/tmp/before", "1")
  vm:reset()
  t:assert_eq(vm:state(), "booted")
  vm:run("test ! -f /tmp/before"):assert_ok()
  t:assert_eq(vm:run("echo back").stdout, "back\n")
end)

test("the power button shuts the guest down gracefully", function(t)
  local vm = provium:vm("b", "default"):boot()
  vm:power_button()
  t:assert_eq(vm:state(), "shutdown")
  t:assert_contains(vm:console():read_log(), "power button pressed")
  t:assert_contains(t:assert_raises(function() vm:run("true") end), "VM is shut down")
end)

test("the guest clock can be read, set and moved", function(t)
  local vm = provium:vm("c", "default"):boot()
  local clock = vm:clock()
  clock:set(1700000000)
  local now = clock:get()
  t:assert(now >= 1700000000 and now < 1700000005, "clock:get after set: " .. now)
  clock:advance("1h")
  t:assert(clock:get_ns() >= (1700000000 + 3600) * 1000000000)
  local date = tonumber(vm:run("date +%s").stdout)
  t:assert(math.abs(date - (1700000000 + 3600)) < 5, "date +%s = " .. date)
  clock:advance(-3600)
  t:assert(clock:get() < 1700000010)
  t:assert_contains(t:assert_raises(function() clock:set(0/0) end), "finite")
end)
