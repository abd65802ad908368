-- A Debian userland built by provium (profile `web` in provium.toml: bookworm with
-- python3, curl, nginx-light, iproute2 and procps): host-built programs run as
-- they are, and the seeds' examples that need a real distribution run as written.
local vm = provium:vm("w", "web"):boot()

test("python3, curl and ip are there", function(t)
  vm:run("python3 -c 'print(1+1)'"):assert_ok()
  t:assert_eq(vm:run("python3 -c 'print(1+1)'").stdout, "2\n")
  t:assert_contains(vm:run("curl --version").stdout, "curl 7.88")
  t:assert_contains(vm:run("ip -br link show lo").stdout, "lo")
  t:assert_eq(vm:read_file("/etc/debian_version"):sub(1, 3), "12.")
end)

test("a program built on the host, dynamically linked, runs as it is", function(t)
  local here = _PROVIUM_SOURCE_PATH:match("^(.*/)")
  local bin = os.tmpname()
  local built = os.execute("cc -O2 -o " .. bin .. " " .. here .. "helpers/c/hello.c")
  if not built then
    os.remove(bin)
    error("cannot build helpers/c/hello.c with the host's cc (cargo needs one to link)")
  end
  vm:push_file(bin, "/usr/local/bin/myprog")
  os.remove(bin)
  local r = vm:run("myprog --version")
  r:assert_ok()
  t:assert_contains(r.stdout, "hello 1.0 (glibc 2.36)")
  t:assert_contains(vm:run("ldd /usr/local/bin/myprog").stdout, "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6")
end)

-- Seed 004: Subplot's lib/daemon scenarios, with its helper scripts as written.
vm:mkdir("/root/subplot", true)
for _, f in ipairs({"slow-start-daemon.py", "chatty-daemon.sh", "env-with-port.py"}) do
  vm:push_file("helpers/subplot/" .. f, "/root/subplot/" .. f)
end
local cwd = "/root/subplot"

-- "a process X is running": pgrep on the full command line. The pattern's
-- first letter goes in brackets so that pgrep's own `sh -c` never matches.
local function running(name)
  return vm:run("pgrep -f '[" .. name:sub(1, 1) .. "]" .. name:sub(2) .. "'"):ok()
end

-- lib/daemon connects to a daemon's port once it is open and closes the
-- connection at once; the helper scripts exit on that (and only then is
-- Python's buffered stdout written), so wait for the exit.
local function knock(port, name)
  vm:run("bash -c 'exec 3<>/dev/tcp/127.0.0.1/" .. port .. "'"):assert_ok()
  vm:wait_until(function() return not running(name) end, {timeout = 30, desc = name .. " exits after the knock"})
end

test("daemon is started and terminated", function(t)
  t:assert(not running("sleep 12765"), "there is no \"sleep 12765\" process")
  local d = vm:daemon("sleep 12765")
  t:assert(running("sleep 12765"), "a process \"sleep 12765\" is running")
  d:stop()
  t:assert(not running("sleep 12765"))
end)

test("daemon takes a while to open its port", function(t)
  t:assert(not running("slow-start-daemon.py"))
  local d = vm:daemon("./slow-start-daemon.py", {port = 8888, cwd = cwd, timeout = "30s"})
  knock(8888, "slow-start-daemon.py")
  d:stop()
  t:assert(not running("slow-start-daemon.py"))
end)

test("daemon never opens the intended port", function(t)
  t:assert(not running("sleep 12765"))
  local err = t:assert_raises(function() vm:daemon("sleep 12765", {port = 8888, timeout = "2s"}) end)
  t:assert_contains(err, "8888")
  t:assert(running("sleep 12765"), "a process \"sleep 12765\" is running")
end)

test("daemon stdout and stderr are retrievable", function(t)
  t:assert(not running("sleep 12765"), "the last test's scope stopped its daemon")
  t:assert(not running("chatty-daemon"))
  local d = vm:daemon("./chatty-daemon.sh", {cwd = cwd, log = "hi there"})
  d:stop()
  t:assert(not running("chatty-daemon"))
  t:assert_eq(d:stdout(), "hi there\n")
  t:assert_eq(d:stderr(), "hola\n")
end)

test("additional environment variables for one daemon only", function(t)
  local env = vm:daemon("/usr/bin/env", {env = {custom_variable = "has a Value"}, log = "custom_variable"})
  env:stop()
  t:assert_contains(env:stdout(), "custom_variable=has a Value")
  local p = vm:daemon("./env-with-port.py 8765", {cwd = cwd, port = 8765, env = {custom_variable = "1337"}, timeout = "30s"})
  knock(8765, "env-with-port.py 8765")
  p:stop()
  t:assert_contains(p:stdout(), "custom_variable=1337")
  local q = vm:daemon("./env-with-port.py 8766", {cwd = cwd, port = 8766, env = {subplot2 = "000"}, timeout = "30s"})
  knock(8766, "env-with-port.py 8766")
  q:stop()
  t:assert_contains(q:stdout(), "subplot2=000")
  local env2 = vm:daemon("/usr/bin/env", {log = "PATH="})
  env2:stop()
  for _, leaked in ipairs({"custom_variable=has a Value", "custom_variable=1337", "subplot2=000"}) do
    t:assert(not env2:stdout():find(leaked, 1, true), "daemon env2 stdout doesn't contain " .. leaked)
  end
end)

-- Seed 000: a daemon awaited with wait_until, then checked with curl, as written.
test("a daemon's health checked with curl", function(t)
  vm:run("mkdir -p /srv/www /var/run && echo healthy > /srv/www/health")
  vm:push_file("helpers/mydaemon.py", "/usr/bin/mydaemon")
  -- Start a daemon
  local job = vm:background("/usr/bin/mydaemon")
  -- Wait for it to be ready (the seed waits 5 s; Python's start under TCG
  -- on a loaded 2-core machine can take longer)
  vm:wait_until(function()
    local r = vm:exec("test -f /var/run/mydaemon.pid")
    return r.ok
  end, {timeout = 30, desc = "daemon ready"})
  -- Test the daemon's behavior
  local r = vm:exec("curl http://localhost:8080/health")
  assert(r.ok)
  t:assert_eq(r.stdout, "healthy\n")
  -- Clean up
  vm:job_kill(job)
end)

-- nginx-light from the package list. Maintainer scripts do not run in a
-- profile provium builds, so the site the postinst would enable is the
-- test's to write.
test("nginx serves a site", function(t)
  vm:mkdir("/srv/site", true)
  vm:write_file("/srv/site/index.html", "served by nginx\n")
  vm:write_file("/etc/nginx/sites-enabled/site",
    "server { listen 127.0.0.1:8081; root /srv/site; }\n")
  vm:run("nginx -t"):assert_ok()
  local d = vm:daemon("nginx -g 'daemon off;'", {port = 8081})
  t:assert_eq(vm:run("curl -s http://127.0.0.1:8081/").stdout, "served by nginx\n")
  d:stop()
end)
