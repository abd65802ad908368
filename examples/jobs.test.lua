-- Background jobs, exactly as the background-jobs guide shows them:
-- vm:background, vm:job_wait, vm:job_kill, vm:exec (with its boolean `ok`),
-- vm:wait_until and the global assert_eq.
local vm = provium:vm("jobs", "default"):boot()

test("a background job runs while the test goes on", function(t)
  local job = vm:background("sleep 1 && echo done > /tmp/marker")
  t:assert(type(job.id) == "number" and type(job.pid) == "number", "job is {id, pid}")
  local result = vm:job_wait(job, 15)
  assert(not result.running, "job did not finish in time")
  assert_eq(result.exit_code, 0, "job failed")
  t:assert_eq(vm:read_file("/tmp/marker"), "done\n")
end)

test("job_wait with timeout 0 (or none) polls without blocking", function(t)
  local job = vm:background("sleep 30")
  local r = vm:job_wait(job, 0)
  t:assert(r.running, "job should still run")
  t:assert_eq(r.exit_code, -1)
  t:assert(vm:job_wait(job).running, "omitted timeout polls too")
  local killed = vm:job_kill(job)
  t:assert(not killed.running)
  t:assert_eq(killed.exit_code, 137) -- 128 + SIGKILL
end)

test("polling pattern", function(t)
  local job = vm:background("for i in 1 2 3; do echo $i; sleep 0.2; done")
  vm:exec("mkdir -p /tmp/setup-something")
  local result = vm:job_wait(job, 30)
  assert(not result.running, "job did not finish in time")
  assert_eq(result.exit_code, 0, "job failed")
  t:assert_eq(result.stdout, "1\n2\n3\n")
end)

test("a daemon awaited with wait_until, then checked and killed", function(t)
  vm:run("mkdir -p /var/run /srv/www && echo healthy > /srv/www/health")
  vm:write_file("/usr/bin/mydaemon", "#!/bin/sh\nsleep 0.5\necho $$ > /var/run/mydaemon.pid\nexec httpd -f -p 8080 -h /srv/www\n")
  vm:run("chmod +x /usr/bin/mydaemon")
  local job = vm:background("/usr/bin/mydaemon")
  vm:wait_until(function()
    local r = vm:exec("test -f /var/run/mydaemon.pid")
    return r.ok
  end, {timeout = 5, desc = "daemon ready"})
  vm:wait_for_open_port(8080, {timeout = 5})
  local r = vm:exec("wget -q -O - http://localhost:8080/health")
  assert(r.ok)
  t:assert_eq(r.stdout, "healthy\n")
  vm:job_kill(job)
end)

test("exec's ok is a boolean field, not a method", function(t)
  t:assert_eq(vm:exec("true").ok, true)
  t:assert_eq(vm:exec("false").ok, false)
  t:assert_eq(vm:exec("exit 4").exit_code, 4)
end)

test("a wait_until that times out names what it waited for", function(t)
  local err = t:assert_raises(function()
    vm:wait_until(function() return vm:exec("test -f /nope").ok end, {timeout = 0.3, interval = 0.1, desc = "the nope file"})
  end)
  t:assert_contains(err, "wait_until: the nope file not met within 0.3s")
  local n = 0
  t:assert_eq(wait_until(function() n = n + 1; return n >= 3 and n end, {interval = "10ms"}), 3)
end)
