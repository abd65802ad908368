-- A VM's life: pause and resume, warm reset, the ACPI power button, its
-- clock, and what every wrong-state call says.

test("a created VM refuses what needs a running one", function(t)
  local vm = provium:vm("fresh", "default")
  t:assert_eq(vm:cid(), nil)
  -- The seed's rule: the offending state is in the message.
  t:assert_contains(t:assert_raises(function() vm:reset() end),
    "vm `fresh` is created; reset needs a booted VM: call vm:boot() first")
  t:assert_contains(t:assert_raises(function() vm:pause() end), "vm `fresh` is created; pause needs a booted VM")
  t:assert_contains(t:assert_raises(function() vm:resume() end), "vm `fresh` is created; resume needs a paused VM")
  t:assert_contains(t:assert_raises(function() vm:run("true") end), "vm `fresh` is created; run needs a booted VM")
end)

test("pause freezes the guest clock; resume thaws it", function(t)
  local vm = provium:vm("p", "default"):boot()
  t:assert(vm:cid() ~= nil)
  local uptime = function() return tonumber(vm:run("cut -d' ' -f1 /proc/uptime").stdout) end
  local host_before, guest_before = os.time(), uptime()
  vm:pause()
  t:assert_eq(vm:state(), "paused")
  t:assert_contains(t:assert_raises(function() vm:run("true") end),
    "vm `p` is paused; run needs a booted VM: call vm:resume() first")
  t:assert_contains(t:assert_raises(function() vm:boot() end), "vm `p` is paused; boot needs a created VM")
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
  t:assert_contains(t:assert_raises(function() vm:run("true") end), "vm `b` is shutdown; run needs a booted VM")
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

-- Seed 001's creation options, as written (with the default profile).
local pubkey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIProviumExampleKeyOnlyForTests test@provium"
test("creation options: memory, cpus, cmdline, rng_seed, initial_time, files", function(t)
  local vm = provium:vm("v", "default", {
    memory = "2G",
    cpus = 4,
    kernel_cmdline = "console=hvc0 quiet earlyprintk=hvc0",
    rng_seed = 0xdeadbeef,
    initial_time = 1700000000,
    files = {
      {path = "/etc/hostname", content = "v"},
      {path = "/root/.ssh/authorized_keys", content = pubkey},
    },
  }):boot()
  t:assert_eq(vm:read_file("/etc/hostname"), "v")
  t:assert_eq(vm:read_file("/root/.ssh/authorized_keys"), pubkey)
  t:assert_eq(vm:run("nproc").stdout, "4\n")
  local kib = tonumber(vm:run("awk '/MemTotal/ {print $2}' /proc/meminfo").stdout)
  t:assert(kib > 1900000 and kib <= 2097152, "MemTotal " .. kib .. " kB for 2G")
  t:assert_contains(vm:read_file("/proc/cmdline"), "earlyprintk=hvc0")
  local now = tonumber(vm:run("date +%s").stdout)
  t:assert(math.abs(now - 1700000000) <= 2, "guest clock " .. now)
end)

test("per-boot options merge over creation options", function(t)
  local vm = provium:vm("m", "default", {memory = "256M", files = {{path = "/etc/who", content = "creation"}}})
  vm:boot({files = {{path = "/etc/who", content = "boot"}}, cpus = 2})
  t:assert_eq(vm:read_file("/etc/who"), "boot")
  t:assert_eq(vm:run("nproc").stdout, "2\n")
  local kib = tonumber(vm:run("awk '/MemTotal/ {print $2}' /proc/meminfo").stdout)
  t:assert(kib <= 262144, "256M from the creation options, got " .. kib .. " kB")
end)
