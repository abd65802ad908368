-- A wrong argument is reported the same way by every binding: the test's
-- file and line, the method, which argument (by position and name) and
-- what it must be. Option tables name the bad key.
local vm = provium:vm("args", "default"):boot()

local function raised(f)
  local ok, err = pcall(f)
  assert(not ok, "expected an error")
  return tostring(err)
end

test("a wrong argument names the method, the argument and the line", function(t)
  local err = raised(function() vm:write_file("/tmp/x", nil) end)
  t:assert_contains(err, "arguments.test.lua:13: vm:write_file: argument 2 (data) must be a string, got nil")
  t:assert_contains(raised(function() vm:read_file({}) end),
    "vm:read_file: argument 1 (path) must be a string, got table")
  t:assert_contains(raised(function() vm:stat() end), "vm:stat: argument 1 (path) must be a string, got nil")
  t:assert_contains(raised(function() vm:boot(5) end), "vm:boot: argument 1 (opts) must be a table or nil, got integer")
  -- No number is quietly made a string.
  t:assert_contains(raised(function() vm:run(42) end), "vm:run: argument 1 (cmd) must be a string, got integer")
  -- Other objects use the same mechanism.
  local f = vm:open_file("/tmp/args-file", {write = true, create = true})
  t:assert_contains(raised(function() f:write(nil) end), "file:write: argument 1 (data) must be a string, got nil")
  t:assert_contains(raised(function() f:seek("x") end), "file:seek: argument 1 (offset) must be an integer, got string")
  f:close()
  local p = vm:run_async("sleep 5")
  t:assert_contains(raised(function() p:stdin_write(false) end),
    "proc:stdin_write: argument 1 (data) must be a string, got boolean")
  p:close()
end)

test("an option of the wrong type is named", function(t)
  t:assert_contains(raised(function() vm:run("true", {env = 5}) end),
    "vm:run: option `env` must be a table or nil, got integer")
  t:assert_contains(raised(function() vm:run("true", {cwd = 7}) end),
    "vm:run: option `cwd` must be a string or nil, got integer")
  t:assert_contains(raised(function() vm:open_file("/tmp/y", {write = true, create = true, perm = -1}) end),
    "vm:open_file: option `perm` must be a non-negative integer, got -1")
end)

test("env keys with `=` or NUL are refused", function(t)
  t:assert_contains(raised(function() vm:run("true", {env = {["A=B"] = "1"}}) end),
    'vm:run: env key "A=B" must be non-empty, without `=` or NUL')
  t:assert_contains(raised(function() vm:run("true", {env = {["A\0B"] = "1"}}) end), "without `=` or NUL")
  t:assert_contains(raised(function() vm:run("true", {env = {[1] = "x"}}) end), "vm:run: env keys must be strings")
  t:assert_contains(raised(function() vm:run("true", {env = {A = "x\0y"}}) end), "env.A may not contain a NUL byte")
  -- Well-formed ones still work.
  t:assert_eq(vm:run("echo $A", {env = {A = "fine"}}).stdout, "fine\n")
end)

test("pack and unpack work with a dot or a colon", function(t)
  local packed = provium:pack("<I4", 258)
  t:assert_eq(packed, provium.pack("<I4", 258))
  t:assert_eq(provium:unpack("<I4", packed), 258)
  t:assert_eq(provium.unpack("<I4", packed), 258)
end)

test("reserved names are refused for VMs and bridges", function(t)
  for _, name in ipairs({"pack", "unpack", "vm_fixture", "lab_fixture", "timeout"}) do
    t:assert_contains(raised(function() provium:vm(name, "default") end), "`" .. name .. "` is reserved")
  end
  t:assert_contains(raised(function() provium:bridge("pack") end), "`pack` is reserved")
end)

test("kernel_cmdline_append adds tokens after the profile's command line", function(t)
  local v = provium:vm("appended", "default", {memory = "256M", kernel_cmdline_append = "provium.example=1  foo=bar"}):boot()
  local cmdline = v:read_file("/proc/cmdline")
  t:assert_contains(cmdline, "loglevel=5 cryptomgr.notests")
  t:assert_contains(cmdline, "provium.example=1 foo=bar")
  t:assert(cmdline:find("loglevel=5", 1, true) < cmdline:find("foo=bar", 1, true), "after the profile's: " .. cmdline)
  local err = raised(function()
    provium:vm("pinned2", "default"):boot({kernel_cmdline_append = "rdinit=/bin/sh"})
  end)
  t:assert_contains(err, "boot option `kernel_cmdline_append` pins rdinit=")
end)

test("a kernel_cmdline that pins another rdinit is refused, not overridden", function(t)
  local v = provium:vm("pinned", "default")
  local err = raised(function() v:boot({kernel_cmdline = "console=ttyS0 rdinit=/bin/sh"}) end)
  t:assert_contains(err, "vm `pinned`: boot option `kernel_cmdline` pins rdinit=, but provium starts its agent")
  t:assert_eq(v:state(), "created")
end)
