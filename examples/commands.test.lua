-- The three forms of vm:run, and what a command can rely on.
local vm = provium:vm("cmd", "default"):boot()

test("shell form runs through sh -c", function(t)
  t:assert_eq(vm:run("echo $((6 * 7)) | tr 4 X").stdout, "X2\n")
end)

test("argument-list form runs without a shell", function(t)
  local r = vm:run("echo", {"$HOME", "a b"})
  t:assert_eq(r.stdout, "$HOME a b\n")
end)

test("options: env, cwd, stdin, args", function(t)
  local r = vm:run("echo $GREETING from $(pwd)", {env = {GREETING = "hi"}, cwd = "/proc"})
  t:assert_eq(r.stdout, "hi from /proc\n")
  t:assert_eq(vm:run("tr a-z A-Z", {stdin = "shout\n"}).stdout, "SHOUT\n")
  t:assert_eq(vm:run("printf", {args = {"%s-%s", "x", "y"}}).stdout, "x-y")
  local clean = vm:run("env", {env_clear = true, env = {ONLY = "me", PATH = "/usr/bin:/bin"}, args = {}})
  t:assert_eq(clean.stdout, "ONLY=me\nPATH=/usr/bin:/bin\n")
end)

test("a timeout kills the command and says so", function(t)
  local r = vm:run("sleep 30", {timeout = "500ms"})
  t:assert(r.timed_out)
  t:assert_eq(r.status, "timed_out")
  t:assert_eq(r.exit_code, -2)
end)

test("a missing command is a result, not an error", function(t)
  local r = vm:run("no-such-command --flag")
  t:assert_eq(r.exit_code, 127)
  local direct = vm:run("/no/such/binary", {})
  t:assert_eq(direct.exit_code, 127)
  t:assert_contains(direct.stderr, "/no/such/binary")
end)

test("a background child that keeps stdout open does not hang run", function(t)
  local r = vm:run("sleep 60 & echo started")
  t:assert_eq(r.stdout, "started\n")
  t:assert(r:ok())
end)

test("a signal shows up as signalled", function(t)
  local r = vm:run("kill -9 $$")
  t:assert_eq(r.status, "signalled")
  t:assert_eq(r.signal, 9)
  t:assert_eq(r.exit_code, -1)
end)

test("the shell form works with a cleared environment", function(t)
  local r = vm:run("echo hi", {env_clear = true})
  r:assert_ok()
  t:assert_eq(r.stdout, "hi\n")
  r = vm:run("echo $ONLY", {env_clear = true, env = {ONLY = "me"}})
  t:assert_eq(r.stdout, "me\n")
end)

test("a dynamically linked host binary says which loader the guest lacks", function(t)
  -- The host's /bin/true needs glibc's loader; the default guest is busybox
  -- only. The file is there, so "not found" alone would be a wrong answer.
  vm:push_file("/bin/true", "/tmp/hi")
  vm:run("chmod +x /tmp/hi")
  local loader = "/lib64/ld-linux-x86-64.so.2"
  for _, r in ipairs({vm:run("/tmp/hi"), vm:run("/tmp/hi", {}), vm:run("hi", {env = {PATH = "/tmp"}})}) do
    t:assert_eq(r.exit_code, 127)
    t:assert_contains(r.stderr, "/tmp/hi needs " .. loader .. ", which this guest does not have")
    t:assert_contains(r.stderr, "link it statically, or boot a profile with a C library (`base = \"debian\"` in provium.toml")
  end
  local p = vm:run_async("/tmp/hi")
  t:assert_contains(p:wait(30).stderr, "/tmp/hi needs " .. loader)
  -- A command that really is missing still reads as missing.
  local r = vm:run("no-such-command-here")
  t:assert_eq(r.exit_code, 127)
  t:assert(not r.stderr:find("needs", 1, true), r.stderr)
end)
