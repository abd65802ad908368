-- Fixtures: start from a prepared guest instead of booting and setting it up.
local web = require("helpers.web")

local vm = provium:vm_fixture("fixtures/web") -- booted, httpd already running

test("the fixture's daemon is already serving", function(t)
  local r = vm:run("wget -q -O - http://127.0.0.1:" .. web.port .. "/")
  r:assert_ok()
  t:assert_eq(r.stdout, "hello from the fixture\n")
end)

test("each file gets its own copy of the fixture", function(t)
  vm:write_file("/srv/www/index.html", "changed here only\n")
  local other = provium:vm_fixture("fixtures/web")
  t:assert_eq(other:read_file("/srv/www/index.html"), "hello from the fixture\n")
  t:assert_eq(vm:read_file("/srv/www/index.html"), "changed here only\n")
end)

test("a VM restored from a fixture can be snapshotted and restored again", function(t)
  vm:write_file("/srv/www/index.html", "second generation\n")
  local s = vm:snapshot()
  vm:shutdown()
  vm:restore(s)
  t:assert_eq(vm:read_file("/srv/www/index.html"), "second generation\n")
  local r = vm:run("wget -q -O - http://127.0.0.1:" .. web.port .. "/")
  t:assert_eq(r.stdout, "second generation\n")
end)
