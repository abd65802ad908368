-- The NixOS test driver's machine methods, under their driver names:
-- start_all, execute / succeed / fail, copies both ways, crash,
-- wait_for_shutdown, typing on the serial console, and systemd units.

local m = provium:vm("m", "default", {memory = "256M"}):boot()
-- Declared at file level and left for start_all() to boot.
local lazy = provium:vm("lazy", "default", {memory = "256M"})

-- A host directory of its own for every test that needs one.
local function host_tmpdir()
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p '" .. dir .. "'"))
  return dir
end

local function host(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  return out
end

test("start_all boots every declared VM of the scope and the file, in parallel", function(t)
  local a = provium:vm("a", "default", {memory = "256M"})
  local b = provium:vm("b", "default", {memory = "256M"})
  t:assert_eq(select("#", start_all()), 0)
  for _, vm in ipairs({a, b, lazy, m}) do
    t:assert_eq(vm:state(), "booted", vm:name())
  end
  t:assert_eq(b:succeed("echo up"), "up\n")
  -- Again: nothing left to boot, nothing rebooted.
  local cid = a:cid()
  start_all()
  t:assert_eq(a:cid(), cid)
  -- A sub-lab has no parent scope: only its own VMs boot.
  local dc = provium:lab("dc")
  local w = dc:vm("w", "default", {memory = "256M"})
  local later = provium:vm("later", "default", {memory = "256M"})
  t:assert_eq(select("#", dc:start_all()), 0)
  t:assert_eq(w:state(), "booted")
  t:assert_eq(later:state(), "created")
  lazy:shutdown()
end)

test("execute returns the exit code and stdout and never raises on failure", function(t)
  local status, out = m:execute("echo hi; exit 3")
  t:assert_eq(status, 3)
  t:assert_eq(out, "hi\n")
  t:assert_eq(select("#", m:execute("true")), 2)
  t:assert_eq(m:execute("true"), 0)
  t:assert_eq(m:execute("kill -9 $$"), 128 + 9)
  local started = os.time()
  t:assert_eq(m:execute("sleep 30", {timeout = "300ms"}), 124)
  t:assert(os.time() - started < 10, "the timeout stopped it")
  t:assert_contains(t:assert_raises(function() m:execute("true", {timout = 1}) end),
    "vm:execute: unknown option `timout` (known: timeout)")
  t:assert_contains(t:assert_raises(function() m:execute("true", 5) end),
    "vm:execute: argument 2 (opts) must be a table or nil, got integer")
  t:assert_contains(t:assert_raises(function() m:execute(42) end),
    "vm:execute: argument 1 (cmd) must be a string, got integer")
end)

test("succeed returns stdout or raises with the command, exit code and stderr; fail is the converse", function(t)
  t:assert_eq(m:succeed("echo ok"), "ok\n")
  local e = t:assert_raises(function() m:succeed("echo out; echo oops >&2; exit 4") end)
  t:assert_contains(e, "vm:succeed: command `echo out; echo oops >&2; exit 4` failed: status=exited code=4")
  t:assert_contains(e, 'stderr="oops\\n"')
  t:assert_eq(m:fail("echo no; false"), "no\n")
  t:assert_contains(t:assert_raises(function() m:fail("echo yes") end),
    "vm:fail: command `echo yes` unexpectedly succeeded")
end)

test("copy_from_host copies files and trees with their modes and links", function(t)
  local dir = host_tmpdir()
  assert(os.execute(table.concat({
    "cd '" .. dir .. "'",
    "mkdir -p src/bin src/empty src/locked",
    "printf alpha > src/a.txt && chmod 0644 src/a.txt",
    "printf '#!/bin/sh\\necho ran\\n' > src/bin/run.sh && chmod 0755 src/bin/run.sh",
    "printf s > src/secret && chmod 0600 src/secret",
    "printf x > src/locked/x && chmod 0500 src/locked",
    "chmod 0750 src/empty",
    "ln -s a.txt src/link",
  }, " && ")))
  m:copy_from_host(dir .. "/src", "/tmp/deep/tree")
  t:assert_eq(m:read_file("/tmp/deep/tree/a.txt"), "alpha")
  t:assert_eq(m:succeed("/tmp/deep/tree/bin/run.sh"), "ran\n")
  local modes = {["a.txt"] = 420, ["bin/run.sh"] = 493, secret = 384, empty = 488, locked = 320, ["locked/x"] = 420}
  for path, perm in pairs(modes) do
    t:assert_eq(m:stat("/tmp/deep/tree/" .. path).perm, perm, path)
  end
  t:assert_eq(m:succeed("readlink /tmp/deep/tree/link"), "a.txt\n")
  t:assert_eq(m:read_file("/tmp/deep/tree/link"), "alpha")
  -- A single file, replacing what is there (and its mode).
  m:write_file("/tmp/one", "old")
  m:copy_from_host(dir .. "/src/secret", "/tmp/one")
  t:assert_eq(m:read_file("/tmp/one"), "s")
  t:assert_eq(m:stat("/tmp/one").perm, 384)
  -- A relative host path is relative to this file, like vm:push_file.
  m:copy_from_host("nixos.test.lua", "/tmp/self.lua")
  t:assert_contains(m:read_file("/tmp/self.lua"), "copy_from_host copies files and trees")
  t:assert_contains(t:assert_raises(function() m:copy_from_host(dir .. "/nope", "/tmp/x") end),
    "vm `m`: copy_from_host: cannot read `" .. dir .. "/nope` on the host: No such file or directory")
  assert(os.execute("mkfifo '" .. dir .. "/fifo'"))
  t:assert_contains(t:assert_raises(function() m:copy_from_host(dir .. "/fifo", "/tmp/f") end),
    "is a fifo; only files, directories and symbolic links are copied")
  os.execute("chmod -R u+w '" .. dir .. "' && rm -rf '" .. dir .. "'")
end)

test("copy_from_vm copies a guest file or tree into a host directory, keeping its name", function(t)
  m:succeed(table.concat({
    "mkdir -p /tmp/out/d/sub",
    "printf data > /tmp/out/d/f && chmod 0640 /tmp/out/d/f",
    "printf '#!/bin/sh\\n' > /tmp/out/d/sub/tool && chmod 0755 /tmp/out/d/sub/tool",
    "ln -s f /tmp/out/d/l",
    "chmod 0750 /tmp/out/d",
  }, " && "))
  local dir = host_tmpdir()
  local copy = m:copy_from_vm("/tmp/out/d", dir .. "/made/here")
  t:assert_eq(copy, dir .. "/made/here/d")
  t:assert_eq(host("cat '" .. copy .. "/f'"), "data")
  t:assert_eq(host("stat -c '%a' '" .. copy .. "' '" .. copy .. "/f' '" .. copy .. "/sub/tool'"), "750\n640\n755\n")
  t:assert_eq(host("readlink '" .. copy .. "/l'"), "f\n")
  -- One file; a second copy replaces the first.
  m:write_file("/tmp/out/note", "v1")
  m:copy_from_vm("/tmp/out/note", dir)
  m:write_file("/tmp/out/note", "v2")
  t:assert_eq(m:copy_from_vm("/tmp/out/note", dir), dir .. "/note")
  t:assert_eq(host("cat '" .. dir .. "/note'"), "v2")
  t:assert_contains(t:assert_raises(function() m:copy_from_vm("/tmp/out/missing", dir) end),
    "vm `m`: copy_from_vm: stat `/tmp/out/missing`: No such file or directory")
  t:assert_contains(t:assert_raises(function() m:copy_from_vm("/dev/null", dir) end),
    "vm `m`: copy_from_vm: `/dev/null` is a character device; only files, directories and symbolic links are copied")
  t:assert_contains(t:assert_raises(function() m:copy_from_vm("/", dir) end),
    "vm `m`: copy_from_vm: `/` has no name to copy under")
  os.execute("rm -rf '" .. dir .. "'")
end)

test("crash cuts the power: no guest shutdown, the VM is shutdown and says why", function(t)
  t:assert_contains(t:assert_raises(function() provium:vm("never", "default"):crash() end),
    "vm `never` is created; crash needs a booted or paused VM: call vm:boot() first")
  local c = provium:vm("c", "default", {memory = "256M"}):boot()
  c:crash()
  t:assert_eq(c:state(), "shutdown")
  t:assert(not c:console():read_log():find("Power down", 1, true), "the guest saw no shutdown")
  t:assert_contains(t:assert_raises(function() c:run("true") end),
    "vm `c` is shutdown; run needs a booted VM: it was stopped by vm:crash(); create a new VM")
  t:assert_contains(t:assert_raises(function() c:crash() end), "vm `c` is shutdown; crash needs a booted or paused VM")
  -- A paused guest loses its power too.
  local p = provium:vm("p", "default", {memory = "256M"}):boot()
  p:pause()
  p:crash()
  t:assert_eq(p:state(), "shutdown")
end)

test("wait_for_shutdown returns once the guest powered itself off", function(t)
  local w = provium:vm("w", "default", {memory = "256M"}):boot()
  t:assert_contains(t:assert_raises(function() w:wait_for_shutdown("500ms") end),
    "vm `w`: wait_for_shutdown: the guest did not power off within 500ms; it still runs")
  t:assert_eq(w:state(), "booted")
  w:run("(sleep 1; poweroff -f) >/dev/null 2>&1 &"):assert_ok()
  w:wait_for_shutdown(30)
  t:assert_eq(w:state(), "shutdown")
  t:assert_contains(w:console():read_log(), "Power down")
  t:assert_contains(t:assert_raises(function() w:run("true") end),
    "vm `w` is shutdown; run needs a booted VM: it was stopped by the guest itself (it powered off)")
  -- Off already: it returns at once.
  w:wait_for_shutdown()
end)

test("a command that powers the guest off leaves the VM shutdown, not dead", function(t)
  local v = provium:vm("v", "default", {memory = "256M"}):boot()
  t:assert_contains(t:assert_raises(function() v:run("poweroff -f") end),
    "vm `v` powered off during run (the guest shut itself down) and is shutdown now")
  t:assert_eq(v:state(), "shutdown")
  v:wait_for_shutdown()
  -- The power button, then the wait: the same end.
  local b = provium:vm("pb", "default", {memory = "256M"}):boot()
  b:power_button()
  b:wait_for_shutdown()
  t:assert_eq(b:state(), "shutdown")
end)

test("a guest that reboots instead of powering off is dead, and wait_for_shutdown says so", function(t)
  local r = provium:vm("r", "default", {memory = "256M"}):boot()
  r:run("(sleep 1; reboot -f) >/dev/null 2>&1 &"):assert_ok()
  local e = t:assert_raises(function() r:wait_for_shutdown(30) end)
  t:assert_contains(e, "vm `r` died during wait_for_shutdown: QEMU exited")
  t:assert_contains(e, "after the guest reset itself (a reboot, or a kernel panic with panic=-1; QEMU runs with " ..
    "-no-reboot, so either ends it)")
  t:assert_eq(r:state(), "dead")
end)

test("send_chars and send_key type into a shell on the serial console", function(t)
  local k = provium:vm("k", "default", {memory = "256M"}):boot()
  t:assert_contains(t:assert_raises(function() k:send_key("f13") end),
    "vm `k`: send_key: unknown key `f13` (known: ret, enter, tab, esc, spc, backspace, ctrl-c, ctrl-d, ctrl-z, " ..
    "up, down, right, left)")
  t:assert_contains(t:assert_raises(function() k:send_key(13) end),
    "vm:send_key: argument 1 (key) must be a string, got integer")
  -- A login-less shell on ttyS0, its controlling terminal.
  k:run_async("setsid sh -c 'echo $$ > /tmp/console.pid; exec sh -i </dev/ttyS0 >/dev/ttyS0 2>&1'")
  k:wait_until_succeeds("ls -l /proc/$(cat /tmp/console.pid)/fd/0 | grep -q ttyS0", 20)
  k:send_chars("echo hello-console > /tmp/x")
  k:send_key("ret")
  -- The redirection creates the file a moment before echo writes it.
  k:wait_until_succeeds("grep -qx hello-console /tmp/x", 20)
  t:assert_contains(k:console():read_log(), "echo hello-console > /tmp/x")
  -- History: up recalls the last line, enter runs it again.
  k:succeed("rm /tmp/x")
  k:send_key("up")
  k:send_key("enter")
  k:wait_until_succeeds("grep -qx hello-console /tmp/x", 20)
  -- Ctrl-C interrupts the foreground command; the shell reads on.
  k:send_chars("sleep 1000\r")
  k:wait_until_succeeds("pidof sleep", 20)
  k:send_key("ctrl-c")
  k:send_chars("echo after-interrupt > /tmp/y\r")
  k:wait_until_succeeds("grep -qx after-interrupt /tmp/y", 20)
  k:fail("pidof sleep")
  -- Ctrl-D at an empty prompt ends the shell.
  k:send_key("ctrl-d")
  k:wait_until_fails("kill -0 $(cat /tmp/console.pid)", 20)
  k:shutdown()
  t:assert_contains(t:assert_raises(function() k:send_chars("x") end),
    "vm `k` is shutdown; send_chars needs a booted VM")
end)

test("wait_for_unit and systemctl need systemd, and say so", function(t)
  t:assert_contains(t:assert_raises(function() m:wait_for_unit("default.target") end),
    "vm `m`: wait_for_unit needs systemd, which this guest does not have (no /run/systemd/system)")
  t:assert_contains(t:assert_raises(function() m:systemctl("status") end),
    "vm `m`: systemctl needs systemd, which this guest does not have (no /run/systemd/system)")
end)

-- A stand-in for systemctl: the state of unit U is the content of
-- /run/fake-units/U; `start` makes it active a second later.
local fake_systemctl = [[#!/bin/sh
cmd=$1; shift
for a in "$@"; do case "$a" in -*) ;; *) unit=$a;; esac; done
state=$(cat "/run/fake-units/$unit" 2>/dev/null || echo inactive)
case "$cmd" in
  is-active) echo "$state"; [ "$state" = active ];;
  status) echo "* $unit - a fake unit"; echo "   Active: $state"; [ "$state" = active ];;
  list-jobs) if [ -e /run/fake-jobs ]; then echo "JOB UNIT TYPE STATE"; else echo "No jobs running."; fi;;
  start) echo activating > "/run/fake-units/$unit"; (sleep 1; echo active > "/run/fake-units/$unit") &;;
  *) echo "fake systemctl: $cmd" >&2; exit 1;;
esac
]]

test("where systemd runs, wait_for_unit polls systemctl until the unit is active", function(t)
  local sd = provium:vm("sd", "default", {memory = "256M"}):boot()
  sd:mkdir("/run/systemd/system", {parents = true})
  sd:mkdir("/run/fake-units", {parents = true})
  sd:write_file("/bin/systemctl", fake_systemctl)
  sd:succeed("chmod 0755 /bin/systemctl")
  local status, out = sd:systemctl("start web.service")
  t:assert_eq(status, 0)
  t:assert_eq(out, "")
  sd:wait_for_unit("web.service")
  t:assert_eq(select(2, sd:systemctl("is-active web.service")), "active\n")
  t:assert_eq(sd:systemctl("frobnicate"), 1)
  sd:write_file("/run/fake-units/bad.service", "failed\n")
  local e = t:assert_raises(function() sd:wait_for_unit("bad.service") end)
  t:assert_contains(e, "vm `sd`: wait_for_unit: unit `bad.service` failed:\n* bad.service - a fake unit")
  t:assert_contains(t:assert_raises(function() sd:wait_for_unit("idle.service") end),
    "vm `sd`: wait_for_unit: unit `idle.service` is inactive and no job is pending")
  sd:write_file("/run/fake-units/slow.service", "activating\n")
  t:assert_contains(t:assert_raises(function() sd:wait_for_unit("slow.service", {timeout = "1s"}) end),
    "vm `sd`: wait_for_unit: unit `slow.service` was not active within 1s (last state: `activating`)")
  -- Inactive with a job pending: it waits for the job.
  sd:write_file("/run/fake-jobs", "")
  sd:run("(sleep 1; echo active > /run/fake-units/queued.service) >/dev/null 2>&1 &")
  sd:wait_for_unit("queued.service", 20)
end)

test("busybox poweroff (without -f) powers the guest off", function(t)
  local v = provium:vm("plainoff", "default"):boot()
  v:run("(sleep 1; poweroff) >/dev/null 2>&1 &"):assert_ok()
  v:wait_for_shutdown(60)
  t:assert_eq(v:state(), "shutdown")
end)
