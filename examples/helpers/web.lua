-- Helpers shared by test files and fixture builders (loaded with require).
local M = {}

M.port = 8080

-- Installs a tiny site and starts busybox httpd on M.port.
function M.install(vm)
  vm:mkdir("/srv/www", true)
  -- Relative to this file; a literal path also makes the page part of the
  -- key of every fixture that uses this helper: edit it, and they rebuild.
  vm:push_file("site/index.html", "/srv/www/index.html")
  vm:daemon("httpd -f -p " .. M.port .. " -h /srv/www", {port = M.port})
end

return M
