//! What a user reads when something goes wrong, against real guests: the
//! console excerpt of a failure, wrong-state errors, the state after a
//! timeout, and bad arguments. Each message names the object, the state and
//! the way out.

mod common;
use common::{file, json_lines, Suite};

/// Runs one file with `--json`; its report.
fn run_file(s: &Suite, name: &str, text: &str) -> serde_json::Value {
    s.write(name, text);
    let out = s.run(&["--json", name]);
    let reports = json_lines(&out);
    file(&reports, name).clone()
}

fn test_named<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["tests"].as_array().unwrap().iter().find(|t| t["name"] == name).unwrap_or_else(|| panic!("{report:#}"))
}

#[test]
fn a_failures_console_excerpt_shows_kernel_warnings_and_is_left_out_when_empty() {
    let s = Suite::new();
    let r = run_file(
        &s,
        "excerpt.test.lua",
        r#"
local vm = provium:vm("v", "default"):boot()
test("a warning was logged", function(t)
  vm:run("echo '<4>provium-test: a warning from the kernel log' > /dev/kmsg")
  vm:run("echo '<6>provium-test: info is boot chatter' > /dev/kmsg")
  t:fail("look at the console")
end)
test("a quiet guest", function(t)
  t:fail("nothing on the console")
end)
"#,
    );
    let warned = test_named(&r, "a warning was logged");
    let excerpt = warned["console"]
        .as_array()
        .and_then(|c| c.iter().find(|e| e["vm"] == "v"))
        .and_then(|e| e["tail"].as_str())
        .unwrap_or_else(|| panic!("{warned:#}"));
    assert!(excerpt.contains("provium-test: a warning from the kernel log"), "{excerpt}");
    assert!(!excerpt.contains("info is boot chatter"), "{excerpt}");
    assert!(!excerpt.contains("PCI: Fatal"), "known-harmless boot lines are left out: {excerpt}");

    // The human report: the first test has its excerpt; a file with a
    // quiet guest prints no empty header.
    s.write(
        "quiet.test.lua",
        "local vm = provium:vm(\"q\", \"default\"):boot()\ntest(\"x\", function(t) t:fail(\"no\") end)\n",
    );
    let out = s.run(&["quiet.test.lua"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL x"), "{text}");
    assert!(!text.contains("(console, last lines)"), "an empty excerpt has no header: {text}");
}

#[test]
fn a_vm_stopped_by_a_test_timeout_is_shutdown_and_says_who_stopped_it() {
    let s = Suite::new();
    let r = run_file(
        &s,
        "timeout.test.lua",
        r#"
local busy = provium:vm("busy", "default"):boot()
local idle = provium:vm("idle", "default"):boot()
test("slow", {timeout = 4}, function(t)
  busy:run("sleep 60")
end)
test("after", function(t)
  t:assert_eq(busy:state(), "shutdown")
  t:assert_contains(t:assert_raises(function() busy:run("true") end),
    'vm `busy` is shutdown; run needs a booted VM: it was stopped by the timeout of test "slow"')
  -- `idle` ran nothing when it was stopped: its first op finds out.
  t:assert_contains(t:assert_raises(function() idle:run("true") end),
    'vm `idle` was stopped by the timeout of test "slow" (cannot run)')
  t:assert_eq(idle:state(), "shutdown")
end)
"#,
    );
    let slow = test_named(&r, "slow");
    assert_eq!(slow["status"], "failed", "{slow:#}");
    let msg = slow["message"].as_str().unwrap();
    assert!(msg.contains("test timeout exceeded"), "{msg}");
    assert!(msg.contains("was stopped by the timeout of test \"slow\""), "{msg}");
    assert!(!msg.contains("died"), "a timeout is not a crash: {msg}");
    let after = test_named(&r, "after");
    assert_eq!(after["status"], "passed", "{after:#}");
}

#[test]
fn an_error_raised_with_a_table_shows_its_contents() {
    let s = Suite::new();
    let r = run_file(
        &s,
        "table_error.test.lua",
        "test(\"raises a table\", function(t)\n  error({code = 1, why = \"bad\", nested = {2}})\nend)\n\
         test(\"a bad argument\", function(t)\n  t:assert_eq(1, 1, 5)\nend)\n",
    );
    let msg = test_named(&r, "raises a table")["message"].as_str().unwrap().to_string();
    assert!(msg.contains("error raised with a table: {code = 1, nested = {[1] = 2}, why = \"bad\"}"), "{msg}");
    assert!(!msg.contains("table: 0x"), "{msg}");
    let msg = test_named(&r, "a bad argument")["message"].as_str().unwrap().to_string();
    assert!(msg.starts_with("table_error.test.lua:5: t:assert_eq: argument 3 (msg) must be a string or nil"), "{msg}");
}

#[test]
fn config_errors_stop_the_run_at_load_naming_the_file_and_the_key() {
    let s = Suite::new();
    s.write(
        "provium.toml",
        "[profiles.nokernel]\nkernel = \"/nonexistent/vmlinuz\"\n\n[profiles.spare]\nkernel = \"/nonexistent/other\"\n",
    );
    s.write("a.test.lua", "test(\"boots\", function(t) provium:vm(\"v\", \"default\"):boot() end)\n");
    s.write("b.test.lua", "test(\"missing kernel\", function(t) provium:vm(\"v\", \"nokernel\"):boot() end)\n");
    let out = s.run(&["."]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`provium.toml`: `profiles.nokernel.kernel`: `/nonexistent/vmlinuz` does not exist; used by"),
        "{err}"
    );
    assert!(err.contains("b.test.lua"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("PASS"), "no test ran");

    // A profile no file names is not checked: the run goes on.
    std::fs::remove_file(s.path().join("b.test.lua")).unwrap();
    let out = s.run(&["."]);
    assert_eq!(out.status.code(), Some(0), "`spare` is unused");

    // A TOML syntax error says where, in lines and columns.
    s.write("provium.toml", "[profiles.k]\nkernel = \"/x\"\ncmdline = = \"quiet\"\n");
    let out = s.run(&["."]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot parse `provium.toml`: line 3, column 11"), "{err}");
}

#[test]
fn no_files_in_json_is_a_json_line() {
    let s = Suite::new();
    std::fs::create_dir(s.path().join("empty")).unwrap();
    let out = s.run(&["--json", "empty"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(json_lines(&out).is_empty(), "no file reports");
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(line["type"], "no_files");
    assert_eq!(line["message"], "no *.test.lua files found");
}

#[test]
fn list_and_doctor_sweep_what_a_killed_run_left_in_dev_shm() {
    let s = Suite::new();
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    // A pid that cannot run: above the kernel's pid_max.
    let stale = std::path::PathBuf::from(format!("/dev/shm/provium-{uid}/99999999-1-v"));
    for cmd in [&["list", "."][..], &["doctor"][..]] {
        std::fs::create_dir_all(&stale).unwrap();
        std::fs::write(stale.join("ram"), b"guest memory").unwrap();
        s.run(cmd);
        assert!(!stale.exists(), "`provium {cmd:?}` left {}", stale.display());
    }
}
