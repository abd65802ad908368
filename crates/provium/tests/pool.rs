//! The resource pool end to end, with the real binary and real guests: a
//! file whose boot does not fit waits (`file_blocked`) and then runs; a
//! claim bounds its file's boots, and a claim or a lab boot beyond the pool
//! fails at once (the lab booting none of its VMs); two
//! files that hold a VM each and each want a second are reported as a
//! deadlock rather than hanging.
//!
//! They need `scripts/setup` to have run. They use TCG (`PROVIUM_ACCEL=tcg`),
//! 256 MiB guests and `--no-psi` (host pressure from other work on the
//! machine would otherwise hold the second file back and change what is
//! measured), and at most two VMs at once (CI has 2 cores).

use std::io::Read;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{file, json_lines, Suite};

/// What a 256 MiB guest holds of the pool: its RAM and QEMU's 100 MiB.
const VM_256: u64 = (256 + 100) << 20;
/// What a file holds of the pool while it runs, besides its VMs.
const PER_FILE: u64 = 50 << 20;

/// Runs provium with `args`; kills it and fails if it takes longer than
/// `limit` (a pool that hangs must fail the test, not stall the suite).
fn run_within(s: &Suite, args: &[&str], limit: Duration) -> (Output, u32) {
    let started = Instant::now();
    let mut child = s.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn provium");
    let pid = child.id();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        out.read_to_end(&mut b).map(|_| b)
    });
    let err_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        err.read_to_end(&mut b).map(|_| b)
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for provium") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&err_reader.join().unwrap().unwrap_or_default()).into_owned();
            panic!("provium {args:?} hung: killed after {limit:?}\n--- stderr\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = Output {
        status,
        stdout: out_reader.join().unwrap().expect("read stdout"),
        stderr: err_reader.join().unwrap().expect("read stderr"),
    };
    eprintln!(
        "--- provium {args:?} exit={:?} in {:?}\n{}\n--- stderr\n{}",
        output.status.code(),
        started.elapsed(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output, pid)
}

/// Every line of a `--json` run, in order.
fn events(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("json line")).collect()
}

/// The position of the first event of `kind` for `file` (a suffix).
fn position(events: &[serde_json::Value], kind: &str, file: &str) -> Option<usize> {
    events.iter().position(|e| e["type"] == kind && e["file"].as_str().is_some_and(|f| f.ends_with(file)))
}

fn amount(memory_bytes: u64, cpus: u32) -> serde_json::Value {
    serde_json::json!({"memory_bytes": memory_bytes, "cpus": cpus})
}

#[test]
fn a_boot_that_does_not_fit_waits_for_the_pool_then_runs() {
    let s = Suite::new();
    for name in ["a.test.lua", "b.test.lua"] {
        s.write(
            name,
            r#"
local vm = provium:vm("v", "default", {memory = "256M"}):boot()
test("runs", function(t) vm:run("true"):assert_ok() end)
"#,
        );
    }
    // Room for both files' overheads and one VM, not two.
    let mem = format!("{}", 2 * PER_FILE + VM_256 + (100 << 20));
    let (out, pid) = run_within(
        &s,
        &["--json", "-j", "2", "--no-psi", "--mem", &mem, "--cpus", "4", "--cpu-overcommit", "1", "."],
        Duration::from_secs(240),
    );
    assert_eq!(out.status.code(), Some(0));
    let reports = json_lines(&out);
    for f in ["a.test.lua", "b.test.lua"] {
        assert_eq!(file(&reports, f)["passed"], true, "{reports:#?}");
    }
    let ev = events(&out);
    for e in ev.iter().filter(|e| e["type"] == "file_dispatched") {
        assert_eq!(e["reservation"], amount(PER_FILE, 0), "{e}");
    }
    // Both were dispatched at once (-j 2); whichever booted second waited.
    let blocked: Vec<&serde_json::Value> = ev.iter().filter(|e| e["type"] == "file_blocked").collect();
    assert_eq!(blocked.len(), 1, "one boot waits: {blocked:#?}");
    assert_eq!(blocked[0]["reason"], "pool_full");
    assert_eq!(blocked[0]["waiting_for"], amount(VM_256, 1));
    let waiter = blocked[0]["file"].as_str().unwrap();
    let other = if waiter.ends_with("a.test.lua") { "b.test.lua" } else { "a.test.lua" };
    let at = |kind, f| position(&ev, kind, f).unwrap_or_else(|| panic!("no {kind} for {f}"));
    assert!(at("file_dispatched", waiter) < at("file_blocked", waiter), "it waited after its dispatch");
    assert!(at("file_dispatched", other) < at("file_blocked", waiter), "both files ran at once");
    assert!(at("vm_stopped", other) < at("vm_spawned", waiter), "the second VM started only once the first stopped");
    // The pool never lent more than it has.
    let states: Vec<&serde_json::Value> = ev.iter().filter(|e| e["type"] == "pool_state").collect();
    assert!(!states.is_empty(), "pool_state comes every second");
    let limit: u64 = mem.parse().unwrap();
    for st in states {
        let used = st["used"]["memory_bytes"].as_u64().unwrap();
        assert!(used <= limit, "{st}");
        assert_eq!(used + st["available"]["memory_bytes"].as_u64().unwrap(), limit, "{st}");
    }
    assert_eq!(s.leftovers(pid), Vec::<String>::new());
}

#[test]
fn a_claim_bounds_its_files_boots_and_a_claim_or_lab_beyond_the_pool_fails() {
    let s = Suite::new();
    s.write("big.test.lua", "provium:claim{memory = \"4G\", cpus = 1}\ntest(\"never\", function(t) end)\n");
    s.write(
        "claimed.test.lua",
        r#"
provium:claim{memory = "700M", cpus = 2}
local a = provium:vm("a", "default", {memory = "256M"}):boot()
local ok, err = pcall(function() provium:vm("b", "default", {memory = "256M"}):boot() end)
local again_ok, again = pcall(function() provium:claim{cpus = 1} end)
test("the second boot is beyond the claim", function(t)
  t:assert(not ok, "a boot beyond the claim must fail")
  t:assert_contains(tostring(err), "vm `b`: boot cannot reserve its memory and vCPUs: this needs 356 MiB and 1 vCPU, and the file's claim of 700 MiB and 2 vCPUs has only 344 MiB and 1 vCPU left")
  a:run("true"):assert_ok()
end)
test("a second claim is refused", function(t)
  t:assert(not again_ok)
  t:assert_contains(tostring(again), "provium:claim: claim already taken")
end)
test("no claim inside a test", function(t)
  local ok, e = pcall(function() provium:claim{cpus = 1} end)
  t:assert(not ok)
  t:assert_contains(tostring(e), "provium:claim: only on `provium` at file top level")
end)
"#,
    );
    // Each 512 MiB VM alone (612 MiB) would fit in the 1 GiB pool; the lab
    // reserves for both at once, so neither boots.
    s.write(
        "lab.test.lua",
        r#"
local pair = provium:lab("pair")
pair:vm("x", "default")
pair:vm("y", "default")
local ok, err = pcall(function() pair:boot() end)
test("a lab boot reserves for all its VMs or for none", function(t)
  t:assert(not ok)
  t:assert_contains(tostring(err), "lab `pair` boot cannot reserve for its members: requested 1224 MiB and 2 vCPUs, which exceeds the pool's total of 1 GiB and 2 vCPUs")
  t:assert_eq(pair.x:state(), "created")
  t:assert_eq(pair.y:state(), "created")
end)
"#,
    );
    let (out, pid) = run_within(
        &s,
        &["--json", "-j", "2", "--no-psi", "--mem", "1G", "--cpus", "2", "--cpu-overcommit", "1", "."],
        Duration::from_secs(240),
    );
    assert_eq!(out.status.code(), Some(1));
    let reports = json_lines(&out);
    let big = file(&reports, "big.test.lua");
    let msg = big["chunk_error"].as_str().unwrap_or_else(|| panic!("no chunk_error: {big:#}"));
    assert!(
        msg.contains(
            "big.test.lua:1: provium:claim: requested 4 GiB and 1 vCPU, which exceeds the pool's total of 1 GiB and 2 \
             vCPUs; pass --mem to give the pool more"
        ),
        "{msg}"
    );
    let claimed = file(&reports, "claimed.test.lua");
    assert_eq!(claimed["passed"], true, "{claimed:#}");

    let ev = events(&out);
    let claim = amount(700 << 20, 2);
    let acquired = position(&ev, "claim_acquired", "claimed.test.lua").expect("claim_acquired");
    let released = position(&ev, "claim_released", "claimed.test.lua").expect("claim_released");
    assert_eq!(ev[acquired]["amount"], claim);
    assert_eq!(ev[released]["amount"], claim);
    assert!(acquired < released);
    assert!(position(&ev, "vm_stopped", "claimed.test.lua").unwrap() < released, "held until its VMs stopped");
    assert_eq!(position(&ev, "claim_acquired", "big.test.lua"), None);
    assert_eq!(file(&reports, "lab.test.lua")["passed"], true, "{reports:#?}");
    assert_eq!(position(&ev, "vm_spawned", "lab.test.lua"), None, "no VM of the lab started");
    assert_eq!(s.leftovers(pid), Vec::<String>::new());
}

#[test]
fn two_files_holding_a_vm_each_and_wanting_another_are_a_deadlock_not_a_hang() {
    let s = Suite::new();
    // Each file boots one VM, meets the other at a barrier (so both hold
    // one), then boots a second. The pool fits exactly two files and two
    // VMs: both second boots wait for memory only the other could give
    // back, and neither will: without the check, this hangs for ever (the
    // file timeouts do not count pool waits).
    for name in ["a.test.lua", "b.test.lua"] {
        s.write(
            name,
            r#"
local first = provium:vm("first", "default", {memory = "256M"}):boot()
test("a second VM", function(t)
  provium:barrier("both-hold-one", 2, 180)
  local second = provium:vm("second", "default", {memory = "256M"}):boot()
  second:run("true"):assert_ok()
  first:run("true"):assert_ok()
end)
"#,
        );
    }
    let mem = format!("{}", 2 * PER_FILE + 2 * VM_256);
    let (out, pid) = run_within(
        &s,
        &["--json", "-j", "2", "--no-psi", "--mem", &mem, "--cpus", "4", "--cpu-overcommit", "1", "."],
        Duration::from_secs(300),
    );
    assert_eq!(out.status.code(), Some(1));
    let reports = json_lines(&out);
    let tests: Vec<&serde_json::Value> = reports.iter().map(|r| &r["tests"][0]).collect();
    let (failed, passed): (Vec<&serde_json::Value>, Vec<_>) = tests.into_iter().partition(|t| t["status"] == "failed");
    assert_eq!((failed.len(), passed.len()), (1, 1), "one victim, one survivor: {reports:#?}");
    let msg = failed[0]["message"].as_str().unwrap();
    assert!(
        msg.contains(
            "vm `second`: boot cannot reserve its memory and vCPUs: the pool is deadlocked: 2 files hold 812 MiB and \
             2 vCPUs of its 812 MiB and 4 vCPUs and every one of them is waiting for more, while the 2 vCPUs still \
             free serves none of the 2 waiting requests (this one wants 356 MiB and 1 vCPU)"
        ),
        "{msg}"
    );
    // The survivor waited for the victim's memory, then got it.
    let ev = events(&out);
    let survivor = reports.iter().find(|r| r["passed"] == true).unwrap()["path"].as_str().unwrap();
    let blocked = position(&ev, "file_blocked", survivor).expect("the survivor waited");
    assert_eq!(ev[blocked]["waiting_for"], amount(VM_256, 1));
    assert_eq!(s.leftovers(pid), Vec::<String>::new());
}
