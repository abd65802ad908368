-- Helpers shared by test files and fixture builders (loaded with require).
local M = {}

M.port = 8080

-- Installs a tiny site and starts busybox httpd on M.port.
function M.install(vm)
  vm:mkdir("/srv/www", true)
  vm:write_file("/srv/www/index.html", "hello from the fixture\n")
  vm:daemon("httpd -f -p " .. M.port .. " -h /srv/www", {port = M.port})
end

return M
