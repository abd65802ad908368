-- Layer 0: raw syscalls, ioctls and memory reads, made by the guest agent's
-- own process (x86_64 Linux syscall numbers). What the kernel answers is a
-- result (ret, errno), never an error.
local vm = provium:vm("l0", "default"):boot()

local SYS = {
  read = 0, close = 3, mmap = 9, munmap = 11, writev = 20, getpid = 39,
  uname = 63, fchdir = 81, chroot = 161, openat = 257, pipe2 = 293,
}
local AT_FDCWD = -100
local O_WRONLY_CREAT_TRUNC = 0x241
local O_DIRECTORY = 0x10000
local FIONREAD = 0x541B
local EIO, ENOENT, EBADF, ENOTTY = 5, 2, 9, 25

local function zeros(n) return string.rep("\0", n) end

test("getpid is the agent's pid", function(t)
  local r = vm:syscall(SYS.getpid)
  t:assert_eq(r.errno, 0)
  t:assert(r.ret > 0, "pid " .. r.ret)
  t:assert_eq(r.result, r.ret)
  t:assert_eq(#r.out_bufs, 0)
  -- Commands are the agent's children: the shell's parent is the agent.
  t:assert_eq(vm:run("echo $PPID").stdout, r.ret .. "\n")
end)

test("a failing syscall is a result with errno", function(t)
  local r = vm:syscall(SYS.close, -1)
  t:assert_eq(r.ret, -1)
  t:assert_eq(r.errno, EBADF)
end)

test("uname fills a 390-byte struct utsname", function(t)
  local r = vm:syscall(SYS.uname, {bufs = {zeros(390)}, ptrs = {0}})
  t:assert_eq(r.ret, 0)
  local uts = r.out_bufs[1]
  t:assert_eq(#uts, 390)
  t:assert_eq(uts:sub(1, 5), "Linux")
  -- The release is the third of six 65-byte fields.
  t:assert_eq(uts:sub(131, 195):match("^[^%z]*") .. "\n", vm:run("uname -r").stdout)
end)

test("nested pointers: writev through an iovec", function(t)
  local path = "/tmp/writev.txt"
  local fd = vm:syscall(SYS.openat, {args = {AT_FDCWD, 0, O_WRONLY_CREAT_TRUNC, 420}, bufs = {path .. "\0"}, ptrs = {1}})
  t:assert_eq(fd.errno, 0)
  -- struct iovec {void *base; size_t len}: the agent writes the address of
  -- buffer 2 into buffer 1 at offset 0.
  local iov = string.pack("<I8I8", 0, 6)
  local w = vm:syscall(SYS.writev, {
    args = {fd.ret, 0, 1},
    bufs = {iov, "nested"},
    ptrs = {1},
    nested = {{parent = 1, child = 2, offset = 0}},
  })
  t:assert_eq(w.ret, 6)
  t:assert(string.unpack("<I8", w.out_bufs[1]) ~= 0, "the iovec came back holding the patched address")
  t:assert_eq(w.out_bufs[2], "nested")
  t:assert_eq(vm:syscall(SYS.close, fd.ret).ret, 0)
  t:assert_eq(vm:read_file(path), "nested")
end)

test("chroot through the table form, and back out", function(t)
  local c = provium:vm("chroot", "default"):boot()
  c:mkdir("/tmp/newroot")
  c:write_file("/tmp/newroot/marker", "inside")
  -- The old root stays open so the agent can come back (fchdir + chroot(".")).
  local old = c:syscall(SYS.openat, {args = {AT_FDCWD, 0, O_DIRECTORY}, bufs = {"/\0"}, ptrs = {1}})
  t:assert_eq(old.errno, 0)
  local r = c:syscall(SYS.chroot, {bufs = {"/tmp/newroot\0"}, ptrs = {0}})
  t:assert_eq(r.ret, 0)
  t:assert_eq(r.errno, 0)
  -- The agent resolves paths in its new root now.
  t:assert_eq(c:read_file("/marker"), "inside")
  t:assert_eq(c:syscall(SYS.fchdir, old.ret).ret, 0)
  t:assert_eq(c:syscall(SYS.chroot, {bufs = {".\0"}, ptrs = {0}}).ret, 0)
  t:assert_eq(c:read_file("/tmp/newroot/marker"), "inside")
  c:syscall(SYS.close, old.ret)
  local missing = c:syscall(SYS.chroot, {bufs = {"/no/such/dir\0"}, ptrs = {0}})
  t:assert_eq(missing.ret, -1)
  t:assert_eq(missing.errno, ENOENT)
end)

test("ioctl FIONREAD on an open file: the bytes left", function(t)
  vm:write_file("/tmp/ten.txt", "0123456789")
  local f = vm:open_file("/tmp/ten.txt", {read = true})
  t:assert_eq(f:read(3), "012")
  local r = vm:ioctl(f:fd(), FIONREAD, zeros(4))
  t:assert_eq(r.ret, 0)
  t:assert_eq(r.result, 0)
  t:assert_eq(string.unpack("<i4", r.out_data), 7)
  -- A File works as well as its fd(); a buffer's address lands in `data`.
  local p = vm:ioctl(f, FIONREAD, zeros(16), {bufs = {"x"}, ptr_offsets = {8}})
  t:assert_eq(string.unpack("<i4", p.out_data), 7)
  t:assert(string.unpack("<I8", p.out_data, 9) ~= 0, "address patched at offset 8")
  t:assert_eq(p.out_bufs[1], "x")
  -- A request the file does not know is a result too.
  local bad = vm:ioctl(f:fd(), 0x5401, zeros(60)) -- TCGETS on a regular file
  t:assert_eq(bad.ret, -1)
  t:assert_eq(bad.errno, ENOTTY)
  f:close()
  t:assert_contains(t:assert_raises(function() vm:ioctl(nil, FIONREAD) end), "ioctl: missing fd")
  t:assert_contains(t:assert_raises(function() vm:ioctl(1) end), "ioctl: missing cmd")
  t:assert_contains(t:assert_raises(function() vm:ioctl(f, FIONREAD) end), "file is closed")
end)

test("read_mem reads what the kernel wrote into an mmap'd page", function(t)
  local m = vm:syscall(SYS.mmap, 0, 4096, 3, 0x22, -1, 0) -- PROT_READ|WRITE, MAP_PRIVATE|ANONYMOUS
  t:assert_eq(m.errno, 0)
  local addr = m.ret
  t:assert_eq(vm:syscall(SYS.uname, addr).ret, 0) -- straight into the page
  local bytes, errno = vm:read_mem(addr, 5)
  t:assert_eq(bytes, "Linux")
  t:assert_eq(errno, nil)
  t:assert_eq(vm:syscall(SYS.munmap, addr, 4096).ret, 0)
  bytes, errno = vm:read_mem(addr, 5)
  t:assert_eq(bytes, nil)
  t:assert_eq(errno, EIO)
  t:assert_eq(select(2, vm:read_mem(0, 8)), EIO)
end)

test("syscall_async: await gives the result once", function(t)
  local p = vm:syscall_async(SYS.getpid)
  local r = p:await()
  t:assert_eq(r.errno, 0)
  t:assert_eq(r.ret, vm:syscall(SYS.getpid).ret)
  t:assert_contains(t:assert_raises(function() p:await() end), "syscall_async: handle already awaited")
  t:assert_contains(tostring(p), "awaited")
end)

test("a blocked syscall_async does not block the VM", {timeout = 120}, function(t)
  local pipe = vm:syscall(SYS.pipe2, {bufs = {zeros(8)}, ptrs = {0}})
  t:assert_eq(pipe.ret, 0)
  local rfd, wfd = string.unpack("<i4i4", pipe.out_bufs[1])
  local pid = vm:syscall(SYS.getpid).ret
  -- read(2) on the empty pipe blocks inside the agent...
  local pending = vm:syscall_async(SYS.read, {args = {rfd, 0, 64}, bufs = {zeros(64)}, ptrs = {1}})
  -- ...while the VM keeps serving: a command, a file, and the write that
  -- ends the read.
  t:assert_eq(vm:run("echo still-serving").stdout, "still-serving\n")
  t:assert_eq(vm:read_file("/tmp/ten.txt"), "0123456789")
  vm:run("echo from-run > /proc/" .. pid .. "/fd/" .. wfd):assert_ok()
  local r = pending:await()
  t:assert_eq(r.ret, 9)
  t:assert_eq(r.out_bufs[1]:sub(1, 9), "from-run\n")
  vm:syscall(SYS.close, rfd)
  vm:syscall(SYS.close, wfd)
end)

test("bad option tables and indices are named", function(t)
  local e = t:assert_raises(function() vm:syscall(SYS.getpid, {bufs = {}, ptr = {0}}) end)
  t:assert_contains(e, "vm:syscall: unknown option `ptr`")
  e = t:assert_raises(function() vm:syscall(SYS.getpid, {bufs = {"ab"}, nested = {{parent = 1, child = 1, offset = 4}}}) end)
  t:assert_contains(e, "a pointer at offset 4 does not fit")
  e = t:assert_raises(function() vm:syscall_async(SYS.getpid, {bufs = {"a"}, nested = {{parent = 1, child = 3}}}) end)
  t:assert_contains(e, "nested[1].child = 3: buffers are numbered 1 to 1")
  e = t:assert_raises(function() vm:ioctl(1, FIONREAD, "", {ptr_offset = {}}) end)
  t:assert_contains(e, "vm:ioctl: unknown option `ptr_offset`")
end)
