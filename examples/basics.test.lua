-- The basics: boot the built-in `default` guest, run commands, move files.
-- One VM at file scope serves every test below; it shuts down at file end.
local vm = provium:vm("basics", "default"):boot()

test("guest runs commands", function(t)
  local r = vm:run("uname -s")
  r:assert_ok()
  t:assert_eq(r.stdout, "Linux\n")
  t:assert_eq(r.status, "exited")
  t:assert_eq(r.exit_code, 0)
end)

test("files go in and come back byte for byte", function(t)
  vm:write_file("/tmp/greeting", "hello")
  t:assert_eq(vm:read_file("/tmp/greeting"), "hello")
  -- Binary data survives too.
  local blob = string.rep("\0\1\2\255", 1024)
  vm:write_file("/tmp/blob", blob)
  t:assert_eq(vm:read_file("/tmp/blob"), blob)
  t:assert_eq(vm:run("wc -c < /tmp/blob").stdout, "4096\n")
end)

test("stat, listdir, mkdir, rename, unlink", function(t)
  vm:mkdir("/tmp/a/b/c", {parents = true})
  vm:write_file("/tmp/a/b/c/file", "12345")
  local st = vm:stat("/tmp/a/b/c/file")
  t:assert_eq(st.entry_type, "file")
  t:assert_eq(st.size, 5)
  t:assert_eq(st.perm, 0x1a4) -- 0644
  t:assert_eq(vm:stat("/tmp/a").entry_type, "directory")

  vm:rename("/tmp/a/b/c/file", "/tmp/a/moved")
  local names = {}
  for _, e in ipairs(vm:listdir("/tmp/a")) do
    names[#names + 1] = e.name .. ":" .. e.entry_type
  end
  t:assert_eq(table.concat(names, ","), "b:directory,moved:file")

  vm:unlink("/tmp/a/moved")
  vm:unlink("/tmp/a/b/c")
  t:assert(not vm:run("test -e /tmp/a/moved"):ok(), "moved file should be gone")
end)

test("failures say what happened", function(t)
  local r = vm:run("echo oops >&2; exit 3")
  t:assert(not r:ok())
  t:assert_eq(r.exit_code, 3)
  t:assert_eq(r.stderr, "oops\n")
  local err = t:assert_raises(function() r:assert_ok() end)
  t:assert_contains(err, "status=exited code=3")
  t:assert_contains(err, 'stderr="oops\\n"')
  -- OS errors on file operations raise, naming the path.
  err = t:assert_raises(function() vm:read_file("/no/such/file") end)
  t:assert_contains(err, "/no/such/file")
end)
