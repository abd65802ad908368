//! End-to-end tests of the runner's selection and reporting: tags and meta
//! flags, `--include-slow`, `--fail-fast`, `--rerun-failed`, `--since`,
//! `--watch`, the msgpack event stream, and the console badness checks on
//! real guests.

use std::io::BufRead;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

mod common;
use common::{file, json_lines, Suite};

/// `(name, status, message)` of each test of the file ending in `suffix`.
fn outcomes(reports: &[serde_json::Value], suffix: &str) -> Vec<(String, String, String)> {
    file(reports, suffix)["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["status"].as_str().unwrap().to_string(),
                t["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

const TAGGED: &str = r#"
test("plain", function(t) end)
test("net", {tags = {"net", "fast"}}, function(t) end)
test("disk", {tags = "disk", area = "storage"}, function(t) end)
test("slow one", {slow = true, tags = {"net"}}, function(t) end)
test("boot area", {area = "boot", subsystems = {"mm", "fs"}}, function(t) end)
test("skipped", {skip = "not today", tags = {"net"}}, function(t) end)
todo("later", {tags = {"net"}}, function(t) end)
test("meta todo", {todo = "needs disks"}, function(t) error("never runs") end)
"#;

/// Which tests ran (passed) under `flags`, and the skip reason of the rest.
fn select(s: &Suite, flags: &[&str]) -> Vec<(String, String, String)> {
    let mut args = vec!["--json"];
    args.extend_from_slice(flags);
    args.push("tagged.test.lua");
    let out = s.run(&args);
    assert_eq!(out.status.code(), Some(0), "{flags:?}");
    outcomes(&json_lines(&out), "tagged.test.lua")
}

fn ran(got: &[(String, String, String)]) -> Vec<&str> {
    got.iter().filter(|(_, st, _)| st == "passed").map(|(n, _, _)| n.as_str()).collect()
}

fn reason<'a>(got: &'a [(String, String, String)], name: &str) -> &'a str {
    &got.iter().find(|(n, _, _)| n == name).unwrap().2
}

#[test]
fn selection_flags_follow_the_reference() {
    let s = Suite::new();
    s.write("tagged.test.lua", TAGGED);
    let all = select(&s, &[]);
    assert_eq!(ran(&all), vec!["plain", "net", "disk", "boot area"]);
    assert_eq!(reason(&all, "slow one"), "filtered: slow tests skipped (pass --include-slow)");
    assert_eq!(reason(&all, "skipped"), "skipped: not today");
    assert_eq!(reason(&all, "later"), "todo");
    assert_eq!(reason(&all, "meta todo"), "todo: needs disks");

    assert_eq!(ran(&select(&s, &["--include-slow"])), vec!["plain", "net", "disk", "slow one", "boot area"]);
    let tagged = select(&s, &["--tag", "net", "--tag", "disk"]);
    assert_eq!(ran(&tagged), vec!["net", "disk"]);
    assert_eq!(reason(&tagged, "plain"), r#"filtered: did not match --tag (["net", "disk"])"#);
    let no_fast = select(&s, &["--tag", "net", "--no-tag", "fast", "--include-slow"]);
    assert_eq!(ran(&no_fast), vec!["slow one"], "--no-tag wins over --tag");
    assert_eq!(reason(&no_fast, "net"), r#"filtered: matched --no-tag (["fast"])"#);

    let meta = select(&s, &["--tag-meta", "area=boot", "--tag-meta", "area=storage"]);
    assert_eq!(ran(&meta), vec!["disk", "boot area"], "one key: any value");
    let both = select(&s, &["--tag-meta", "area=boot", "--tag-meta", "subsystems=fs"]);
    assert_eq!(ran(&both), vec!["boot area"], "two keys: all");
    let none = select(&s, &["--tag-meta", "area=boot", "--tag-meta", "subsystems=net"]);
    assert_eq!(ran(&none), Vec::<&str>::new());
    assert_eq!(reason(&none, "boot area"), "filtered: did not match any --tag-meta subsystems=net");
    let no_meta = select(&s, &["--no-tag-meta", "subsystems=mm"]);
    assert_eq!(ran(&no_meta), vec!["plain", "net", "disk"]);
    assert_eq!(reason(&no_meta, "boot area"), "filtered: matched --no-tag-meta (subsystems=mm)");

    let bad = s.run(&["--tag-meta", "=x", "tagged.test.lua"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("`=x` is not KEY=VALUE"));
}

/// Tests skipped before they run get only a terminal event; the others a
/// `test_started` first; the selection reaches the process environment.
#[test]
fn filtered_tests_get_only_a_skip_event_and_the_filter_is_handed_over() {
    let s = Suite::new();
    s.write("tagged.test.lua", TAGGED);
    s.write(
        "env.test.lua",
        r#"test("sees the filter", {tags = {"net"}, area = "boot"}, function(t)
             local f = json.decode(os.getenv("PROVIUM_TEST_FILTER"))
             t:assert_eq(f.include_slow, true)
             t:assert_eq(f.tag[1], "net")
             t:assert_eq(f.tag_meta[1].key, "area")
             t:assert_eq(f.tag_meta[1].value, "boot")
           end)"#,
    );
    let out = s.run(&[
        "--json",
        "--include-slow",
        "--tag-meta",
        "area=boot",
        "--tag",
        "net",
        "tagged.test.lua",
        "env.test.lua",
    ]);
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let started: Vec<&str> =
        lines.iter().filter(|l| l["type"] == "test_started").map(|l| l["name"].as_str().unwrap()).collect();
    // Nothing of tagged.test.lua has both tag `net` and area=boot.
    assert_eq!(started, vec!["sees the filter"], "{lines:#?}");
    let env = json_lines(&out);
    assert_eq!(outcomes(&env, "env.test.lua")[0].1, "passed", "{env:#?}");
}

#[test]
fn fail_fast_rerun_failed_and_since() {
    let s = Suite::new();
    s.write("a_fails.test.lua", r#"test("a", function(t) t:fail("a is broken") end)"#);
    s.write("b_passes.test.lua", r#"test("b", function(t) end)"#);
    s.write("c_passes.test.lua", r#"test("c", function(t) end)"#);

    let out = s.run(&["--json", "--fail-fast", "-j", "1", "."]);
    assert_eq!(out.status.code(), Some(1));
    let reports = json_lines(&out);
    assert_eq!(file(&reports, "a_fails.test.lua")["passed"], false);
    for later in ["b_passes.test.lua", "c_passes.test.lua"] {
        assert_eq!(file(&reports, later)["chunk_error"], "skipped: --fail-fast", "{reports:#?}");
    }

    // Nothing recorded yet in a fresh suite: --rerun-failed has nothing.
    let fresh = Suite::new();
    fresh.write("x.test.lua", r#"test("x", function(t) end)"#);
    let none = fresh.run(&["--rerun-failed", "."]);
    assert_eq!(none.status.code(), Some(0));
    let said = String::from_utf8_lossy(&none.stdout);
    assert!(said.contains("provium --rerun-failed: no prior failure state at `") && said.contains("nothing to re-run"));

    // The fail-fast run recorded a, b and c; a full run records only a.
    assert_eq!(s.run(&["."]).status.code(), Some(1));
    let state: Vec<String> = serde_json::from_slice(&std::fs::read(s.path().join("rerun.json")).unwrap()).unwrap();
    assert_eq!(state.len(), 1, "{state:?}");
    assert!(state[0].ends_with("a_fails.test.lua") && state[0].starts_with('/'), "{state:?}");
    let rerun = s.run(&["--json", "--rerun-failed", "."]);
    let reports = json_lines(&rerun);
    assert_eq!(reports.len(), 1, "{reports:#?}");
    assert!(reports[0]["path"].as_str().unwrap().ends_with("a_fails.test.lua"));
    // A clean run leaves the state as it was.
    assert_eq!(s.run(&["b_passes.test.lua"]).status.code(), Some(0));
    assert!(std::fs::read_to_string(s.path().join("rerun.json")).unwrap().contains("a_fails.test.lua"));

    // --since: only files modified after the reference.
    let old = SystemTime::now() - Duration::from_secs(3600);
    for f in ["a_fails.test.lua", "b_passes.test.lua", "c_passes.test.lua"] {
        std::fs::File::options().write(true).open(s.path().join(f)).unwrap().set_modified(old).unwrap();
    }
    let reference = s.write("stamp", "");
    std::fs::File::options().write(true).open(&reference).unwrap().set_modified(old).unwrap();
    s.write("c_passes.test.lua", r#"test("c", function(t) end)"#);
    let since = s.run(&["--json", "--since", "stamp", "."]);
    let reports = json_lines(&since);
    assert_eq!(reports.len(), 1, "{reports:#?}");
    assert!(reports[0]["path"].as_str().unwrap().ends_with("c_passes.test.lua"));
}

/// `--watch` runs, runs again after an edit, and Ctrl-C leaves nothing.
#[test]
fn watch_reruns_on_an_edit_and_ctrl_c_leaves_nothing() {
    let s = Suite::new();
    s.write(
        "w.test.lua",
        r#"local vm = provium:vm("w", "default"):boot()
           test("first", function(t) vm:run("true"):assert_ok() end)"#,
    );
    let mut child = s.command(&["--json", "--watch", "."]).stdout(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["type"] == "file" {
                    let _ = tx.send(v);
                }
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(120)).expect("the first run reports");
    assert_eq!(first["tests"][0]["name"], "first");
    // mtime granularity: make sure the edit is seen as a change.
    std::thread::sleep(Duration::from_millis(1100));
    s.write(
        "w.test.lua",
        r#"local vm = provium:vm("w", "default"):boot()
           test("second", function(t) vm:run("true"):assert_ok() end)"#,
    );
    let second = rx.recv_timeout(Duration::from_secs(120)).expect("the edit is run");
    assert_eq!(second["tests"][0]["name"], "second");
    assert_eq!(second["passed"], true);
    // Ctrl-C while idle: the process ends, nothing is left behind.
    // SAFETY: kill(2) with a pid we spawned and a valid signal number.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "provium --watch did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    assert_eq!(s.leftovers(pid), Vec::<String>::new());
}

/// Kernel reports on the console fail the test that saw them, with the
/// lines quoted, unless it opted out. Real ones: a panic (sysrq `c`) and a
/// hung task (a writer blocked on a frozen ext4 on a loop device, the
/// guest kernel's own `loop.ko` pushed in); the other kinds are written to
/// the kernel log through /dev/kmsg, which puts them on the console as the
/// kernel's own would be.
#[test]
fn console_badness_fails_the_test_unless_it_opts_out() {
    let s = Suite::new();
    let inputs = provium::guest::GuestInputs::locate().expect("default guest (run scripts/setup)");
    let loop_ko = inputs.modules_dir().join("kernel/drivers/block/loop.ko");
    assert!(loop_ko.exists(), "{}", loop_ko.display());
    s.write(
        "badness.test.lua",
        &(format!("local loop_ko = {:?}\n", loop_ko.display().to_string())
            + r#"
local vm = provium:vm("k", "default"):boot()
local function kmsg(line) vm:run("echo '<3>" .. line .. "' > /dev/kmsg"):assert_ok() end
test("clean", function(t) vm:run("echo hello > /dev/kmsg"):assert_ok() end)
test("warning", function(t) kmsg("WARNING: CPU: 0 PID: 1 at fs/provoked.c:7 provoked+0x0/0x10") end)
test("hung task", function(t)
  vm:push_file(loop_ko, "/tmp/loop.ko")
  vm:run("insmod /tmp/loop.ko && dd if=/dev/zero of=/tmp/fs.img bs=1M count=8 2>/dev/null && " ..
         "losetup /dev/loop0 /tmp/fs.img && mke2fs -q /dev/loop0 && mkdir -p /mnt/f && " ..
         "mount -t ext4 /dev/loop0 /mnt/f && fsfreeze --freeze /mnt/f && " ..
         "echo 1 > /proc/sys/kernel/hung_task_timeout_secs"):assert_ok()
  vm:run_async("touch /mnt/f/blocked")
  wait_until(function() return vm:console():read_log():find("blocked for more than") end, {timeout = 60})
  vm:run("fsfreeze --unfreeze /mnt/f && echo 0 > /proc/sys/kernel/hung_task_timeout_secs"):assert_ok()
end)
test("bug", function(t) kmsg("BUG: kernel NULL pointer dereference, address: 0000000000000008") end)
test("opted out", {console_checks = false}, function(t)
  kmsg("WARNING: CPU: 0 PID: 1 at fs/accepted.c:1 accepted+0x0/0x10")
end)
test("allowed", {console_checks = {"fs/expected.c"}}, function(t)
  kmsg("WARNING: CPU: 0 PID: 1 at fs/expected.c:1 expected+0x0/0x10")
end)
test("clean again", function(t) vm:run("true"):assert_ok() end)
test("panic", function(t)
  local p = provium:vm("p", "default"):boot()
  p:run_async("echo c > /proc/sysrq-trigger")
  p:console():expect("Kernel panic", 90)
end)
"#),
    );
    let out = s.run(&["--json", "badness.test.lua"]);
    assert_eq!(out.status.code(), Some(1));
    let got = outcomes(&json_lines(&out), "badness.test.lua");
    let status = |name: &str| got.iter().find(|(n, _, _)| n == name).map(|(_, st, m)| (st.clone(), m.clone())).unwrap();
    for name in ["clean", "opted out", "allowed", "clean again"] {
        assert_eq!(status(name).0, "passed", "{name}: {got:#?}");
    }
    for (name, kind, quoted) in [
        ("warning", "WARNING", "fs/provoked.c:7"),
        ("hung task", "hung task", "INFO: task touch:"),
        ("bug", "BUG", "NULL pointer dereference"),
        ("panic", "kernel panic", "Kernel panic - not syncing: sysrq triggered crash"),
    ] {
        let (st, message) = status(name);
        assert_eq!(st, "failed", "{name}: {got:#?}");
        assert!(
            message.contains(&format!("---- vm {}: {kind} ----", if name == "panic" { "p" } else { "k" })),
            "{message}"
        );
        assert!(message.contains(quoted), "{name}: {message}");
        assert!(message.contains("meta.console_checks = false"), "{message}");
    }
}

/// `--events-stdout` puts the msgpack frames on stdout and the human output
/// on stderr; `--events-socket` serves the same frames to a client.
#[test]
fn the_event_stream_goes_to_stdout_and_to_a_socket() {
    use provium_protocol::events::{read_all, EventKind};
    let s = Suite::new();
    s.write("e.test.lua", r#"test("one", {area = "x"}, function(t) t:log("hi") end)"#);
    let out = s.run(&["--events-stdout", "e.test.lua"]);
    assert_eq!(out.status.code(), Some(0));
    let frames = read_all(&out.stdout[..]).expect("stdout is only frames");
    let passed: Vec<_> = frames
        .iter()
        .filter_map(|f| match &f.event {
            EventKind::TestPassed { name, meta, log, .. } => Some((name.clone(), meta.clone(), log.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(passed.len(), 1);
    assert_eq!(passed[0].0, "one");
    assert_eq!(passed[0].1["area"].strings(), vec!["x"]);
    assert_eq!(passed[0].2, vec!["hi".to_string()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("PASS e.test.lua"), "the human output is on stderr");
    let both = s.run(&["--events-stdout", "--json", "e.test.lua"]);
    assert_eq!(both.status.code(), Some(2), "--json and --events-stdout conflict");

    // A socket client that connects before the run's first event sees all
    // of them: the run waits for nobody, so the test connects as soon as
    // the socket exists and the file makes the run last a moment.
    s.write("slow.test.lua", r#"test("waits", function(t) _provium_sleep(1.5) end)"#);
    let sock = s.path().join("events.sock");
    let mut child = s.command(&["--events-socket", sock.to_str().unwrap(), "slow.test.lua"]).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        if let Ok(c) = std::os::unix::net::UnixStream::connect(&sock) {
            break c;
        }
        assert!(Instant::now() < deadline, "the socket never appeared");
        std::thread::sleep(Duration::from_millis(10));
    };
    let frames = read_all(client).expect("frames until the run ends");
    assert!(child.wait().unwrap().success());
    assert!(frames.iter().any(|f| matches!(f.event, EventKind::TestPassed { .. })), "{frames:?}");
    assert!(matches!(frames.last().map(|f| &f.event), Some(EventKind::RunFinished { .. })));
    assert!(!sock.exists(), "the socket is removed at the end");
}
