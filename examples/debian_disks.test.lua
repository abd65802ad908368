-- A Debian-profile guest with a data disk: every way of going back restores
-- exactly the disk it had — a VM snapshot, a lab snapshot, a fixture, and
-- reset_between_tests. The root image is shared and never written: each VM's
-- changes to / live in its own memory, and a snapshot keeps them.
provium.reset_between_tests = true
local vm = provium:vm("s", "web", {disks = {{id = "state", size = "32M"}}}):boot()

local function put(v, text)
  v:run("printf '" .. text .. "' | dd of=/dev/disk/by-id/state bs=512 conv=sync,fsync 2>/dev/null"):assert_ok()
end

local function guest_reads(v, id)
  return v:run("dd if=/dev/disk/by-id/" .. id .. " bs=512 count=1 iflag=direct 2>/dev/null | tr -d '\\0'").stdout
end

put(vm, "baseline")
vm:write_file("/etc/motd", "baseline motd\n")

test("a test writes to the disk and to the root", function(t)
  t:assert_eq(guest_reads(vm, "state"), "baseline")
  put(vm, "written by the first test")
  vm:write_file("/etc/motd", "changed\n")
  t:assert_eq(vm:disk("state"):read_sectors(0, 1):sub(1, 25), "written by the first test")
end)

test("reset_between_tests undid the disk write and the root write", function(t)
  t:assert_eq(guest_reads(vm, "state"), "baseline")
  t:assert_eq(vm:disk("state"):read_sectors(0, 1):sub(1, 8), "baseline")
  t:assert_eq(vm:read_file("/etc/motd"), "baseline motd\n")
end)

test("a VM snapshot restores the disk exactly", function(t)
  put(vm, "at the snapshot")
  local snap = vm:snapshot()
  put(vm, "after the snapshot")
  vm:shutdown()
  vm:restore(snap)
  t:assert_eq(guest_reads(vm, "state"), "at the snapshot")
  t:assert_eq(vm:disk("state"):read_sectors(0, 1):sub(1, 15), "at the snapshot")
  -- A second snapshot of the same guest copies the disk again, never the
  -- root image: both are far smaller than the image they boot from.
  local again = vm:snapshot()
  t:log(string.format("snapshots: %.1f MiB and %.1f MiB", snap:size() / 2^20, again:size() / 2^20))
end)

test("a lab snapshot restores every VM's disk", function(t)
  local lab = provium:lab("pair")
  local a = lab:vm("a", "web", {memory = "512M", disks = {{id = "state", size = "8M"}}}):boot()
  local b = lab:vm("b", "default", {disks = {{id = "state", size = "8M"}}}):boot()
  put(a, "a before")
  put(b, "b before")
  local snap = lab:snapshot()
  put(a, "a after!")
  put(b, "b after!")
  lab:restore(snap)
  t:assert_eq(guest_reads(a, "state"), "a before")
  t:assert_eq(guest_reads(b, "state"), "b before")
end)

test("a fixture brings its disk along", function(t)
  local f = provium:vm_fixture("fixtures/debian_disk")
  t:assert_eq(guest_reads(f, "store"), "made by the fixture")
  t:assert_eq(f:read_file("/etc/fixture-note"), "root written by the fixture\n")
  t:assert_eq(f:run("python3 -c 'print(6*7)'").stdout, "42\n")
end)
