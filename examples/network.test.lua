-- Bridges: VMs wired together by provium's userspace switch (no root, no
-- tap devices, no tc). Every member gets an address on the bridge's subnet
-- and `<vm>.<bridge>` names in /etc/hosts.

-- Seed 001's workhorse, as written: attach after boot.
local lan = provium:bridge("lan")
local a = provium:vm("a", "default"):boot()
local b = provium:vm("b", "default"):boot()
lan:attach({a, b})

test("a can reach b", function(t)
  a:run("ping -c 1 -W 1 b.lan"):assert_ok()
end)

-- Reads a classic pcap capture: the link type and each frame's bytes.
local function pcap_frames(pcap)
  local magic, _, _, _, _, _, linktype = string.unpack("<I4I2I2i4I4I4I4", pcap)
  assert(magic == 0xa1b2c3d4, "pcap magic")
  assert(linktype == 1, "linktype Ethernet")
  local frames, pos = {}, 25
  while pos <= #pcap do
    local _, _, incl, orig, next_pos = string.unpack("<I4I4I4I4", pcap, pos)
    assert(incl == orig, "whole frames")
    frames[#frames + 1] = pcap:sub(next_pos, next_pos + incl - 1)
    pos = next_pos + incl
  end
  return frames
end

-- ICMP echo requests (type 8) and replies (type 0) among Ethernet frames.
local function icmp(frames, kind)
  local n = 0
  for _, f in ipairs(frames) do
    if #f >= 35 and f:byte(13) == 0x08 and f:byte(14) == 0x00 and f:byte(24) == 1 and f:byte(35) == kind then
      n = n + 1
    end
  end
  return n
end

test("seed 002: a bridge capture is a pcap of every frame", function(t)
  local peer = provium:vm("peer", "default"):boot()
  lan:attach(peer)
  local bridge, vm = lan, a
  local cap = bridge:capture()
  vm:run("ping -c 5 peer.lan")
  local pcap = table.concat(cap:drain("2s"))
  cap:close()
  local frames = pcap_frames(pcap)
  t:log(#frames .. " frames captured")
  assert(icmp(frames, 8) == 5, "5 echo requests, got " .. icmp(frames, 8))
  assert(icmp(frames, 0) == 5, "5 echo replies, got " .. icmp(frames, 0))
  -- The test-scope VM leaves the bridge when the test ends.
end)

test("the test-scope member left the bridge with its scope", function(t)
  assert(table.concat(lan:members(), ",") == "a,b", table.concat(lan:members(), ","))
  assert(a:run("grep -c peer.lan /etc/hosts").stdout == "0\n", "peer.lan is gone from a's hosts file")
end)

test("attach before boot, and a VM on two bridges", function(t)
  local wan = provium:bridge("wan")
  local c = provium:vm("c", "default")
  wan:attach({c, "a"}) -- a bare name means the lab's VM `a`
  c:boot()
  c:run("ping -c 1 -W 2 a.wan"):assert_ok()
  -- a is on lan (eth0) and wan (its next free NIC).
  assert(a:nic("wan"):bridge() == "wan")
  assert(a:nic("eth0"):bridge() == "lan")
  assert(a:nic("eth1"):bridge() == "wan", "eth<N> counts bridges in name order")
  local out = a:run("ip -4 -o addr show").stdout
  assert(out:find(lan:address("a"), 1, true) and out:find(wan:address("a"), 1, true), out)
  -- c is not on lan: no name, no route.
  assert(not c:run("ping -c 1 -W 1 b.lan"):ok(), "ping -c 1 -W 1 b.lan should fail")
  local n = wan:nic(c):counters()
  assert(n.tx_packets > 0 and n.rx_packets > 0, "guest-side counters count")
end)

test("three VMs, one isolated", function(t)
  local d = provium:vm("d", "default"):boot()
  lan:attach(d)
  lan:isolate(d)
  assert(lan:is_isolated("d"))
  assert(not d:run("ping -c 1 -W 1 a.lan"):ok(), "ping -c 1 -W 1 a.lan should fail")
  a:run("ping -c 1 -W 1 b.lan"):assert_ok()
  lan:unisolate(d)
  d:run("ping -c 1 -W 2 a.lan"):assert_ok()
end)

test("a one-way partition drops one direction only, then heals", function(t)
  local cap_a, cap_b = lan:nic(a):capture(), lan:nic(b):capture()
  lan:partition({from = a, to = b})
  assert(not a:run("ping -c 3 -W 1 b.lan"):ok(), "ping -c 3 -W 1 b.lan should fail")
  local seen_a, seen_b = pcap_frames(table.concat(cap_a:drain("1s"))), pcap_frames(table.concat(cap_b:drain("1s")))
  cap_a:close()
  cap_b:close()
  assert(icmp(seen_a, 8) >= 3, "a sent its requests")
  assert(icmp(seen_b, 8) == 0, "none reached b")
  -- b -> a still flows (b's requests arrive at a; a's replies are cut).
  assert(not lan:is_partitioned(a, b), "a one-way cut is not a symmetric partition")
  lan:unpartition({from = a, to = b})
  a:run("ping -c 1 -W 2 b.lan"):assert_ok()
  lan:partition(a, b)
  assert(lan:is_partitioned("b", "a"))
  assert(not a:run("ping -c 1 -W 1 b.lan"):ok(), "ping -c 1 -W 1 b.lan should fail")
  lan:unpartition(a, b)
  lan:partition_all()
  assert(not b:run("ping -c 1 -W 1 a.lan"):ok(), "ping -c 1 -W 1 a.lan should fail")
  lan:restore_all()
  b:run("ping -c 1 -W 2 a.lan"):assert_ok()
end)

-- The average round trip busybox ping reports, in ms.
local function rtt(vm, target, count)
  local out = vm:run("ping -c " .. count .. " -i 0.2 " .. target).stdout
  local avg = out:match("min/avg/max = [%d.]+/([%d.]+)/")
  return tonumber(avg), out
end

test("latency, loss and bandwidth combine on one bridge", function(t)
  local base = rtt(a, "b.lan", 3)
  lan:add_latency(50)
  lan:drop_rate(5)
  lan:bandwidth_limit(2000000)
  assert(lan:latency_ms() == 50 and lan:drop_rate_pct() == 5 and lan:bandwidth_bps() == 2000000)
  local slow, out = rtt(a, "b.lan", 10)
  t:log(("round trip %.1f ms before, %.1f ms with 50 ms latency"):format(base, slow or -1))
  assert(slow and slow >= 100, "a round trip crosses the bridge twice: " .. out)
  lan:reset()
  assert(lan:latency_ms() == 0 and lan:drop_rate_pct() == 0 and lan:bandwidth_bps() == 0)
end)

-- Seconds to send `kib` KiB from a to b over TCP.
local function transfer(kib)
  local server = b:run_async("nc -l -p 5001 > /dev/null")
  b:wait_for_open_port(5001, "10s")
  local started = a:clock():get()
  a:run("dd if=/dev/zero bs=1024 count=" .. kib .. " 2>/dev/null | nc -w 5 b.lan 5001"):assert_ok()
  server:wait("20s")
  return a:clock():get() - started
end

test("a bandwidth limit slows a transfer", function(t)
  local fast = transfer(256)
  lan:directional_bandwidth_limit({from = a, to = b, bps = 1000000})
  local slow = transfer(256)
  lan:reset()
  t:log(("256 KiB in %.2fs unlimited, %.2fs at 1 Mbit/s"):format(fast, slow))
  -- 256 KiB at 1 Mbit/s is 2.1 s of wire time.
  assert(slow >= 2.0, "limited transfer took " .. slow .. "s")
end)

test("a pulled cable drops frames until it is plugged back", function(t)
  local nic = b:nic("lan")
  nic:disconnect()
  assert(not a:run("ping -c 1 -W 1 b.lan"):ok(), "ping -c 1 -W 1 b.lan should fail")
  nic:reconnect()
  a:run("ping -c 1 -W 3 b.lan"):assert_ok()
  assert(nic:vm_name() == "b" and nic:bridge() == "lan")
end)

test("a live capture makes snapshots refuse, naming where it was opened", function(t)
  local cap = lan:capture()
  local ok, err = pcall(function() a:snapshot() end)
  assert(not ok and tostring(err):find('capture("bridge lan") created at', 1, true), tostring(err))
  cap:close()
  local snap = a:snapshot()
  snap:delete()
end)

test("a lab snapshot of bridged VMs restores into a working network", function(t)
  local sub = provium:lab("net")
  local net = sub:bridge("seg")
  local x = sub:vm("x", "default")
  local y = sub:vm("y", "default")
  net:attach({x, y})
  sub:boot()
  net:add_latency(20)
  x:run("ping -c 1 -W 2 y.seg"):assert_ok()
  local snap = sub:snapshot()
  sub:shutdown()
  sub:restore(snap)
  local again = sub.seg
  assert(again:latency_ms() == 20, "impairments come back with the bridge")
  assert(table.concat(again:members(), ",") == "x,y")
  sub.x:run("ping -c 1 -W 3 y.seg"):assert_ok()
  snap:delete()
end)

test("two VMs restored from one snapshot share a bridge", function(t)
  local base = provium:vm("base", "default"):boot()
  local snap = base:snapshot()
  base:shutdown()
  local c1, c2 = provium:vm("c1", "default"), provium:vm("c2", "default")
  c1:restore(snap)
  c2:restore(snap)
  local twins = provium:bridge("twins")
  twins:attach({c1, c2})
  -- Each copy's interface took its own Ethernet address.
  local mac = function(vm) return vm:read_file("/sys/class/net/eth0/address") end
  assert(mac(c1) ~= mac(c2), "distinct MACs: " .. mac(c1))
  c1:run("ping -c 1 -W 3 c2.twins"):assert_ok()
  snap:delete()
end)

test("an uplink reaches a server the test started on the host's loopback", function(t)
  -- A host-side web server on 127.0.0.1 (busybox is on the host: setup
  -- installs it for the default guest).
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. dir .. " && echo hello from the host > " .. dir .. "/index.html"))
  local port = 20000 + math.random(0, 9999)
  -- In the foreground of a background shell job, so its pid is known and
  -- plain `kill` stops it (no pkill needed on the host).
  local started = io.popen(("busybox httpd -f -p 127.0.0.1:%d -h %s >/dev/null 2>&1 & echo $!"):format(port, dir))
  local pid = assert(tonumber(started:read("l")), "host httpd started")
  started:close()
  local ok, err = pcall(function()
    local gw = lan:enable_uplink()
    t:assert_eq(lan:uplink_gateway(), gw)
    local r = a:run(("timeout 5 wget -q -O - http://%s:%d/"):format(gw, port))
    r:assert_ok()
    t:assert_eq(r.stdout, "hello from the host\n")
    lan:disable_uplink()
    assert(not a:run(("timeout 3 wget -q -O - http://%s:%d/"):format(gw, port)):ok(), "no route after disable_uplink")
  end)
  os.execute(("kill %d; rm -rf %s"):format(pid, dir))
  if not ok then error(err, 0) end
end)

test("directional forms, detach and close", function(t)
  local seg = provium:bridge("seg")
  local e = provium:vm("e", "default", {memory = "256M"}):boot()
  seg:attach({a, e})
  assert(tostring(seg) == "bridge(seg; 2 member(s))", tostring(seg))
  seg:add_directional_latency({from = a, to = e, ms = 40})
  seg:directional_drop_rate({from = e, to = a, p = 0})
  seg:drop_rate({from = a, to = e, p = 0})
  seg:bandwidth_limit({from = e, to = a, bps = 50000000})
  seg:add_latency({from = e, to = a, ms = "10ms"})
  local one_way = rtt(a, "e.seg", 5)
  assert(one_way and one_way >= 50, "40 ms one way plus 10 ms back: " .. tostring(one_way))
  assert(seg:latency_ms() == 0, "directional rules leave the whole-bridge values alone")
  seg:detach(e)
  assert(table.concat(seg:members(), ",") == "a", table.concat(seg:members(), ","))
  assert(not e:run("grep -q a.seg /etc/hosts"):ok(), "a detached member forgets the bridge's names")
  assert(not a:run("ping -c 1 -W 1 e.seg"):ok(), "and is unreachable")
  seg:close()
  local ok, err = pcall(function() seg:attach(e) end)
  assert(not ok and tostring(err):find("bridge `seg` is closed", 1, true), tostring(err))
  assert(a:run("ping -c 1 -W 2 b.lan"):ok(), "other bridges are untouched")
end)

test("bad input names the bridge, the VM or the value", function(t)
  local function fails(f, text)
    local ok, err = pcall(f)
    assert(not ok, "expected an error mentioning " .. text)
    assert(tostring(err):find(text, 1, true), tostring(err))
  end
  fails(function() a:nic("eth7") end, "vm:nic: no NIC `eth7` on vm `a`")
  fails(function() lan:partition({from = a, to = "ghost"}) end, "vm `ghost` is not attached to bridge `lan`")
  fails(function() lan:add_latency("soon") end, "latency must be a number of ms or a duration")
  fails(function() lan:drop_rate(150) end, "loss must be a percentage from 0 to 100, got 150")
  fails(function() provium:bridge("no/slash") end, "a name is letters, digits")
  fails(function() lan:attach("nobody") end, "no vm named `nobody`")
  local own = provium:bridge("own", {addresses = false})
  fails(function() own:enable_uplink() end, "was made with addresses = false")
end)
