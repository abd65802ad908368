//! Labs end to end, with the real binary and real guests: per-test time
//! limits (`meta.timeout`, `provium.timeout`), the file-scope config keys and
//! their mistakes, `reset_between_tests` refusing file-scope streams, lab
//! snapshots refusing open streams, and a timed-out test leaving nothing
//! behind.
//!
//! They need `scripts/setup` to have run. They use TCG (`PROVIUM_ACCEL=tcg`)
//! and small guests, and keep the number of VMs low (CI has 2 cores).

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{file, json_lines, Suite};

/// Runs provium with `args` (spawned, so its pid is known) and returns the
/// output, the pid and the wall time the run took.
fn spawn_run(s: &Suite, args: &[&str]) -> (Output, u32, Duration) {
    let started = Instant::now();
    let child = s.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn provium");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for provium");
    let elapsed = started.elapsed();
    eprintln!(
        "--- provium {args:?} exit={:?} in {elapsed:?}\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, pid, elapsed)
}

/// The report of test `name` in a file's report.
fn test<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["tests"]
        .as_array()
        .unwrap_or_else(|| panic!("no tests array: {report:#}"))
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no test `{name}` in {report:#}"))
}

fn message(t: &serde_json::Value) -> &str {
    t["message"].as_str().unwrap_or_else(|| panic!("no message: {t:#}"))
}

fn chunk_error(report: &serde_json::Value) -> &str {
    report["chunk_error"].as_str().unwrap_or_else(|| panic!("no chunk_error: {report:#}"))
}

#[test]
fn per_test_timeouts_stop_a_stuck_test_and_the_file_goes_on() {
    let s = Suite::new();
    // meta.timeout on a test blocked in a guest command, and on one spinning
    // in Lua (stopped by the instruction hook, no VM involved).
    s.write(
        "a_meta.test.lua",
        r#"
local vm = provium:vm("v", "default", {memory = "256M"}):boot()
test("slow", {timeout = 2}, function(t) vm:run("sleep 60") end)
test("quick", function(t) t:assert_eq(1 + 1, 2) end)
test("spins", {timeout = 1}, function(t) while true do end end)
test("quick again", function(t) t:assert_eq(provium.timeout, nil) end)
"#,
    );
    // provium.timeout is the limit of every test without meta.timeout; a
    // larger meta.timeout lifts it for one test.
    s.write(
        "b_file.test.lua",
        r#"
provium.timeout = 2
local vm = provium:vm("v", "default", {memory = "256M"}):boot()
test("meta.timeout lifts the file's limit", {timeout = 60}, function(t)
  vm:run("sleep 4"):assert_ok()
end)
test("slow", function(t) vm:run("sleep 60") end)
test("quick", function(t) t:assert_eq(provium.timeout, 2) end)
"#,
    );
    // A smaller meta.timeout wins over a larger provium.timeout.
    s.write(
        "c_override.test.lua",
        r#"
provium.timeout = "2m"
local vm = provium:vm("v", "default", {memory = "256M"}):boot()
test("slow", {timeout = 2}, function(t) vm:run("sleep 60") end)
test("quick", function(t) t:assert_eq(provium.timeout, 120) end)
"#,
    );
    let (out, pid, elapsed) = spawn_run(&s, &["--json", "-j", "3", "."]);
    assert!(elapsed < Duration::from_secs(40), "the test watchdogs did not fire: the run took {elapsed:?}");
    assert_eq!(out.status.code(), Some(1));
    let reports = json_lines(&out);
    assert_eq!(reports.len(), 3, "{reports:#?}");

    let meta = file(&reports, "a_meta.test.lua");
    assert_eq!(meta["passed"], false);
    assert!(meta["chunk_error"].is_null(), "{meta:#}");
    let slow = test(meta, "slow");
    assert_eq!(slow["status"], "failed");
    assert!(message(slow).contains("test timeout exceeded (2s)"), "{slow:#}");
    assert_eq!(test(meta, "quick")["status"], "passed", "{meta:#}");
    let spins = test(meta, "spins");
    assert_eq!(spins["status"], "failed");
    assert!(message(spins).contains("test timeout exceeded"), "{spins:#}");
    assert_eq!(test(meta, "quick again")["status"], "passed", "{meta:#}");

    let by_file = file(&reports, "b_file.test.lua");
    assert_eq!(by_file["passed"], false);
    assert!(by_file["chunk_error"].is_null(), "{by_file:#}");
    assert_eq!(test(by_file, "meta.timeout lifts the file's limit")["status"], "passed", "{by_file:#}");
    let slow = test(by_file, "slow");
    assert_eq!(slow["status"], "failed");
    assert!(message(slow).contains("test timeout exceeded (2s)"), "{slow:#}");
    assert_eq!(test(by_file, "quick")["status"], "passed", "{by_file:#}");

    let over = file(&reports, "c_override.test.lua");
    assert_eq!(over["passed"], false);
    let slow = test(over, "slow");
    assert_eq!(slow["status"], "failed");
    assert!(message(slow).contains("test timeout exceeded (2s)"), "{slow:#}");
    assert_eq!(test(over, "quick")["status"], "passed", "{over:#}");

    assert_eq!(s.leftovers(pid), Vec::<String>::new());
}

#[test]
fn reset_between_tests_refuses_a_stream_opened_at_file_scope() {
    let s = Suite::new();
    s.write(
        "streams.test.lua",
        r#"provium.reset_between_tests = true
local vm = provium:vm("v", "default", {memory = "256M"}):boot()
local s = vm:tail_file("/etc/hostname")
test("never runs", function(t) t:fail("a test ran despite the refused baseline") end)
"#,
    );
    let (out, pid, _) = spawn_run(&s, &["--json", "streams.test.lua"]);
    assert_eq!(out.status.code(), Some(1));
    let reports = json_lines(&out);
    let r = file(&reports, "streams.test.lua");
    assert_eq!(r["passed"], false);
    let msg = chunk_error(r);
    assert!(msg.contains("cannot use reset_between_tests with file-scope streams"), "{msg}");
    assert!(msg.contains("vm `v`"), "{msg}");
    assert!(msg.contains("tail_file(\"/etc/hostname\") created at streams.test.lua:3"), "{msg}");
    assert_eq!(r["tests"].as_array().map_or(0, Vec::len), 0, "no test may run: {r:#}");
    assert_eq!(s.leftovers(pid), Vec::<String>::new());
}

#[test]
fn bad_file_scope_config_is_a_chunk_error_naming_the_key() {
    let s = Suite::new();
    s.write("a_reset.test.lua", "provium.reset_between_tests = \"yes\"\ntest(\"x\", function(t) end)\n");
    s.write("b_timeout.test.lua", "provium.timeout = \"soon\"\ntest(\"x\", function(t) end)\n");
    s.write("c_unknown.test.lua", "\nprovium.foo = 1\ntest(\"x\", function(t) end)\n");
    s.write("d_negative.test.lua", "provium.timeout = -1\ntest(\"x\", function(t) end)\n");
    s.write("e_in_test.test.lua", "test(\"config is file-scope only\", function(t)\n  provium.timeout = 5\nend)\n");
    s.write(
        "f_meta.test.lua",
        "test(\"x\", {timeout = \"soon\"}, function(t) end)\ntest(\"after\", function(t) end)\n",
    );
    let out = s.run(&["--json", "."]);
    assert_eq!(out.status.code(), Some(1));
    let reports = json_lines(&out);
    assert_eq!(reports.len(), 6, "{reports:#?}");
    for r in &reports {
        assert_eq!(r["passed"], false, "{r:#}");
    }

    let msg = chunk_error(file(&reports, "a_reset.test.lua"));
    assert!(msg.contains("a_reset.test.lua:1:"), "{msg}");
    assert!(msg.contains("provium.reset_between_tests must be true or false, got string"), "{msg}");

    let msg = chunk_error(file(&reports, "b_timeout.test.lua"));
    assert!(msg.contains("b_timeout.test.lua:1:"), "{msg}");
    assert!(msg.contains("provium.timeout"), "{msg}");
    assert!(msg.contains("`soon`"), "{msg}");

    let msg = chunk_error(file(&reports, "c_unknown.test.lua"));
    assert!(msg.contains("c_unknown.test.lua:2:"), "{msg}");
    assert!(msg.contains("cannot set `provium.foo`: not a recognised file-scope config key"), "{msg}");
    assert!(msg.contains("Known keys: reset_between_tests, timeout"), "{msg}");

    let msg = chunk_error(file(&reports, "d_negative.test.lua"));
    assert!(msg.contains("provium.timeout"), "{msg}");
    assert!(msg.contains("-1"), "{msg}");

    let in_test = file(&reports, "e_in_test.test.lua");
    assert!(in_test["chunk_error"].is_null(), "{in_test:#}");
    let t = test(in_test, "config is file-scope only");
    assert_eq!(t["status"], "failed");
    assert!(message(t).contains("e_in_test.test.lua:2:"), "{t:#}");
    assert!(message(t).contains("cannot set `provium.timeout`: only at file top level"), "{t:#}");

    // A bad meta.timeout fails its own test; the file's other tests run.
    let meta = file(&reports, "f_meta.test.lua");
    assert!(meta["chunk_error"].is_null(), "{meta:#}");
    let t = test(meta, "x");
    assert_eq!(t["status"], "failed");
    assert!(message(t).contains("test `x`: meta.timeout") && message(t).contains("`soon`"), "{t:#}");
    assert_eq!(test(meta, "after")["status"], "passed", "{meta:#}");
}

#[test]
fn a_lab_snapshot_is_refused_while_a_stream_is_open() {
    let s = Suite::new();
    s.write(
        "lab_snap.test.lua",
        r#"
test("lab snapshot and streams", function(t)
  local lab = provium:lab("l")
  local v = lab:vm("v", "default", {memory = "256M"})
  lab:boot()
  local s = v:tail_file("/etc/hostname")
  local ok, err = pcall(function() return lab:snapshot() end)
  t:assert(not ok, "lab:snapshot() succeeded with a stream open")
  t:log(tostring(err))
  s:close()
  local snap = lab:snapshot()
  t:log("size " .. snap:size())
  v:write_file("/tmp/after", "x")
  v:shutdown()
  lab:restore(snap)
  t:assert(not v:run("test -e /tmp/after"):ok(), "restored lab kept a later write")
end)
"#,
    );
    let out = s.run(&["--json", "lab_snap.test.lua"]);
    let reports = json_lines(&out);
    let r = file(&reports, "lab_snap.test.lua");
    let t = test(r, "lab snapshot and streams");
    assert_eq!(t["status"], "passed", "{t:#}");
    assert_eq!(out.status.code(), Some(0));
    let err = t["log"][0].as_str().unwrap();
    assert!(err.contains("lab:snapshot() failed for lab `l`"), "{err}");
    assert!(err.contains("1 open stream(s) or file handle(s)"), "{err}");
    assert!(err.contains("vm `v`: tail_file(\"/etc/hostname\") created at lab_snap.test.lua:6"), "{err}");
    let size: u64 = t["log"][1].as_str().unwrap().trim_start_matches("size ").parse().unwrap();
    assert!(size > 0, "{t:#}");
}

#[test]
fn a_timed_out_test_leaves_no_qemu_and_no_scratch_dir() {
    let s = Suite::new();
    // At the limit: a file-scope VM and a test's sub-lab VM, with a stream,
    // a background process and a file handle open.
    s.write(
        "stuck.test.lua",
        r#"
local outer = provium:vm("outer", "default", {memory = "256M"}):boot()
test("stuck with everything open", {timeout = 10}, function(t)
  local lab = provium:lab("inner")
  local v = lab:vm("v", "default", {memory = "256M"})
  lab:boot()
  local s = v:tail_file("/etc/hostname")
  local p = v:run_async("sleep 600")
  local f = outer:open_file("/tmp/f", {write = true, create = true})
  outer:run("sleep 600")
end)
"#,
    );
    let (out, pid, elapsed) = spawn_run(&s, &["--json", "stuck.test.lua"]);
    assert!(elapsed < Duration::from_secs(60), "the test watchdog did not fire: the run took {elapsed:?}");
    assert_eq!(out.status.code(), Some(1));
    let reports = json_lines(&out);
    let t = test(file(&reports, "stuck.test.lua"), "stuck with everything open");
    assert_eq!(t["status"], "failed");
    assert!(message(t).contains("test timeout exceeded (10s)"), "{t:#}");
    assert_eq!(s.leftovers(pid), Vec::<String>::new());
}

/// Files running at the same time meet at a barrier of the same name; run
/// one at a time, the first waits alone and its barrier times out.
#[test]
fn files_running_together_meet_at_a_barrier() {
    let s = Suite::new();
    for name in ["left", "right"] {
        s.write(
            &format!("{name}.test.lua"),
            "test(\"meets its peer\", function(t)\n  t:assert_eq(provium:barrier(\"meet\", 2, \"60s\"), true)\nend)\n",
        );
    }
    let (out, _, _) = spawn_run(&s, &["--json", "-j", "2", "."]);
    assert_eq!(out.status.code(), Some(0));
    for r in json_lines(&out) {
        assert_eq!(r["passed"], true, "{r:#}");
    }
    s.write("left.test.lua", "test(\"waits alone\", function(t)\n  provium:barrier(\"alone\", 2, \"300ms\")\nend)\n");
    std::fs::remove_file(s.path().join("right.test.lua")).unwrap();
    let (out, _, _) = spawn_run(&s, &["--json", "."]);
    let reports = json_lines(&out);
    let msg = file(&reports, "left.test.lua")["tests"][0]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("barrier `alone`: 1 of 2 arrived within 300ms"), "{msg}");
}
