-- Command output arrives whole, whatever its size, up to provium's cap of
-- 512 MiB (stdout and stderr together); past the cap the call raises and
-- says how to read larger output. Nothing is ever cut silently.
local vm = provium:vm("out", "default"):boot()

-- `dd` with 1 MiB blocks is the guest's fastest source of bytes.
local function zeros(mib)
  return string.format("dd if=/dev/zero bs=1M count=%d 2>/dev/null", mib)
end

test("vm:run returns 200 MB of output whole", function(t)
  local r = vm:run(zeros(200) .. "; echo end-of-output; echo on-stderr >&2")
  r:assert_ok()
  t:assert_eq(#r.stdout, 200 * 1024 * 1024 + #"end-of-output\n")
  t:assert_eq(r.stdout:sub(-14), "end-of-output\n")
  t:assert_eq(r.stdout:sub(1, 4), "\0\0\0\0")
  t:assert_eq(r.stderr, "on-stderr\n")
end)

test("vm:exec, job_wait and proc:stdout() return output past 12 MiB whole", function(t)
  local e = vm:exec(zeros(20))
  t:assert(e.ok, "exec ok")
  t:assert_eq(#e.stdout, 20 * 1024 * 1024)

  local job = vm:background(zeros(20) .. "; echo done")
  local j = vm:job_wait(job, 60)
  t:assert(not j.running, "job finished")
  t:assert_eq(#j.stdout, 20 * 1024 * 1024 + 5)
  t:assert_eq(j.stdout:sub(-5), "done\n")

  local p = vm:run_async(zeros(30) .. "; echo err >&2")
  local r = p:wait(60)
  r:assert_ok()
  t:assert_eq(#r.stdout, 30 * 1024 * 1024)
  t:assert_eq(r.stderr, "err\n")
  t:assert_eq(#p:stdout(), 30 * 1024 * 1024, "proc:stdout() after the end")
end)

test("past the cap vm:run raises, naming the cap and the way out", function(t)
  local err = t:assert_raises(function() vm:run(zeros(600)) end)
  t:assert_contains(err, "512 MiB")
  t:assert_contains(err, "vm:run_async")
  t:assert_contains(err, "stdout_stream")
  -- The command was stopped; the VM works on.
  t:assert_eq(vm:run("echo still here").stdout, "still here\n")
end)

test("past the cap proc:wait raises too, and a stream reads it all", function(t)
  local p = vm:run_async(zeros(600))
  local err = t:assert_raises(function() p:wait(120) end)
  t:assert_contains(err, "512 MiB")
  -- The way out: read the output as it comes.
  local q = vm:run_async(zeros(600))
  local s = q:stdout_stream()
  local total = 0
  while not s:eof() do
    local chunk = s:next(10)
    if chunk then total = total + #chunk end
  end
  s:close()
  t:assert_eq(total, 600 * 1024 * 1024)
end)
