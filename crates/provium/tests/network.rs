//! End-to-end tests of bridges beyond `examples/network.test.lua`: seeded
//! loss repeats with its seed (across runs of the real binary), a lab
//! fixture with a bridge restores into a working network, and an
//! interrupted or killed run leaves no QEMU (the uplink's included) and no
//! socket behind.

use std::collections::BTreeSet;

mod common;
use common::{json_lines, Suite};

/// The echo sequence numbers that got a reply in a run seeded `seed`.
fn replies(s: &Suite, seed: &str) -> BTreeSet<u32> {
    let out = s.run(&["--seed", seed, "loss.test.lua"]);
    assert_eq!(out.status.code(), Some(0), "the run passes");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find_map(|l| l.strip_prefix("REPLIES ")).expect("the test prints its replies");
    line.split(',').filter(|x| !x.is_empty()).map(|x| x.parse().unwrap()).collect()
}

#[test]
fn seeded_loss_drops_the_same_frames_with_the_same_seed() {
    let s = Suite::new();
    s.write(
        "loss.test.lua",
        r#"
local lan = provium:bridge("lossy")
local a = provium:vm("a", "default", {memory = "256M"}):boot()
local b = provium:vm("b", "default", {memory = "256M"}):boot()
lan:attach({a, b})
test("loss", function(t)
  a:run("ping -c 1 -W 3 b.lossy"):assert_ok() -- ARP settled before the loss starts
  lan:directional_drop_rate({from = a, to = b, p = 30})
  local out = a:run("ping -c 40 -i 0.05 -W 1 b.lossy").stdout
  local seqs = {}
  for seq in out:gmatch("seq=(%d+)") do seqs[#seqs + 1] = seq end
  print("REPLIES " .. table.concat(seqs, ","))
end)
"#,
    );
    let first = replies(&s, "42");
    let again = replies(&s, "42");
    let other = replies(&s, "43");
    assert!(first.len() > 10 && first.len() < 40, "30% of 40 requests lost: {first:?}");
    assert_eq!(first, again, "the same seed drops the same requests");
    assert_ne!(first, other, "another seed drops others");
}

#[test]
fn a_bridged_lab_fixture_restores_into_a_working_network() {
    let s = Suite::new();
    s.write(
        "fixtures/pair.fixture.lua",
        r#"
local lan = provium:bridge("lan")
local a = provium:vm("a", "default", {memory = "256M"}):boot()
local b = provium:vm("b", "default", {memory = "256M"}):boot()
lan:attach({a, b})
lan:add_latency(10)
a:run("ping -c 1 -W 3 b.lan"):assert_ok()
return provium:snapshot()
"#,
    );
    s.write(
        "pair.test.lua",
        r#"
local lab = provium:lab_fixture("fixtures/pair")
test("the restored pair still talks", function(t)
  lab.a:run("ping -c 1 -W 3 b.lan"):assert_ok()
  lab.b:run("ping -c 1 -W 3 a.lan"):assert_ok()
  t:assert_eq(lab.lan:latency_ms(), 10)
  t:assert_eq(table.concat(lab.lan:members(), ","), "a,b")
end)
"#,
    );
    let mut cmd = s.command(&["--json", "pair.test.lua"]);
    cmd.env("PROVIUM_FIXTURE_CACHE", s.path().join("cache"));
    let out = cmd.output().unwrap();
    let reports = json_lines(&out);
    assert_eq!(reports[0]["passed"], true, "{:#}", reports[0]);
    assert_eq!(out.status.code(), Some(0));
}

/// Starts a run whose guests sit on a bridge with an uplink, and returns
/// once its test is running.
fn start_bridged_run(s: &Suite) -> (std::process::Child, u32) {
    s.write(
        "held.test.lua",
        r#"
local lan = provium:bridge("lan")
local a = provium:vm("a", "default", {memory = "256M"}):boot()
local b = provium:vm("b", "default", {memory = "256M"}):boot()
lan:attach({a, b})
lan:enable_uplink()
test("held", function(t)
  print("READY")
  a:run("sleep 120")
end)
"#,
    );
    let mut child = s.command(&["held.test.lua"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    assert!(lines.any(|l| l.unwrap().contains("READY")), "the test started");
    (child, pid)
}

#[test]
fn interrupted_and_killed_runs_leave_no_qemu_and_no_switch_socket() {
    let s = Suite::new();
    // Ctrl-C: provium stops its VMs and the uplink's QEMU and removes their
    // scratch directories (the NIC and switch sockets live there).
    let (mut child, pid) = start_bridged_run(&s);
    assert!(s.leftovers(pid).iter().filter(|l| l.starts_with("process")).count() >= 3, "two VMs and the uplink run");
    // SAFETY: kill(2) with a pid of our own child; no memory is touched.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    child.wait().unwrap();
    assert_eq!(s.leftovers(pid), Vec::<String>::new());

    // SIGKILL: no handler runs; every QEMU (the uplink's too) dies with
    // provium, and the next run sweeps the scratch directories.
    let (mut child, pid) = start_bridged_run(&s);
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while s.leftovers(pid).iter().any(|l| l.starts_with("process")) {
        assert!(std::time::Instant::now() < deadline, "QEMU outlived provium: {:?}", s.leftovers(pid));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    s.write("noop.test.lua", "test(\"nothing\", function(t) end)\n");
    assert_eq!(s.run(&["noop.test.lua"]).status.code(), Some(0));
    assert_eq!(s.leftovers(pid), Vec::<String>::new());
}
