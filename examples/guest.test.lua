-- The default guest looks like a usual small Linux system: the familiar
-- directories, and a system log (busybox syslogd + klogd) in
-- /var/log/messages, as seeds 001 and 002 expect.
local vm = provium:vm("g", "default"):boot()

test("the usual directories are there", function(t)
  for _, dir in ipairs({"/var/log", "/var/tmp", "/var/lib", "/home", "/root", "/usr/local/bin", "/tmp", "/run"}) do
    t:assert_eq(vm:stat(dir).entry_type, "directory", dir)
  end
  t:assert_eq(vm:run("readlink /var/run").stdout, "/run\n")
  t:assert_eq(vm:stat("/var/tmp").perm, 1023) -- 0o1777
  -- /usr/local/bin is on PATH, first.
  vm:write_file("/usr/local/bin/mytool", "#!/bin/sh\necho mine\n")
  vm:run("chmod +x /usr/local/bin/mytool")
  t:assert_eq(vm:run("mytool").stdout, "mine\n")
end)

test("logger lands in /var/log/messages, seen by tail_file", function(t)
  local stream = vm:tail_file("/var/log/messages")
  vm:run("logger -t myapp hello from the test"):assert_ok()
  stream:expect("myapp: hello from the test", "10s")
  stream:close()
end)

test("seed 002's pattern: open_file + tail_stream + expect", function(t)
  local f = vm:open_file("/var/log/messages", {read = true})
  local stream = f:tail_stream()
  vm:run("logger ready")
  stream:expect("ready", "30s")
  stream:close()
  f:close()
end)

test("write_file to /var/log/messages then tail_file from the beginning", function(t)
  vm:write_file("/var/log/app.log", "line one\n")
  local s = vm:tail_file("/var/log/app.log", {start = "beginning"})
  s:expect("line one", "5s")
  s:close()
end)

test("kernel messages reach the log through klogd", function(t)
  local stream = vm:tail_file("/var/log/messages")
  vm:run("echo '<4>provium-kmsg-marker' > /dev/kmsg"):assert_ok()
  stream:expect("provium-kmsg-marker", "10s")
  stream:close()
end)

test("the log works again after a reset", function(t)
  vm:reset()
  local stream = vm:tail_file("/var/log/messages")
  vm:run("logger after-reset")
  stream:expect("after-reset", "10s")
  stream:close()
end)
