//! End-to-end tests: the real `provium` binary boots real QEMU guests with the
//! real agent. Each test works in its own temporary directory, which is also
//! the process's `TMPDIR`, so the scratch directories a run creates (and
//! must remove) are easy to check.
//!
//! They need `scripts/setup` to have run (QEMU, busybox-static, the guest
//! kernel). They use TCG (`PROVIUM_ACCEL=tcg`), like CI.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use provium::guest::CpioWriter;

mod common;
use common::{file, json_lines, junitparser, totals, vmlinux, Suite};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples").canonicalize().unwrap()
}

/// The example suite's `provium.toml` (the repository root's: profile `web`).
fn examples_config() -> String {
    examples_dir().join("../provium.toml").canonicalize().unwrap().display().to_string()
}

/// The default guest's initramfs with an `/init` script added: a guest
/// image that has its own init.
fn initrd_with_init(dir: &Path, script: &str) -> PathBuf {
    let images = provium::image::Images::new(Default::default());
    let guest = images.default_guest().expect("default guest (run scripts/setup)");
    let mut bytes = std::fs::read(&guest.initrd).unwrap();
    let mut w = CpioWriter::new();
    w.file("init", 0o755, script.as_bytes());
    bytes.extend(w.finish());
    let path = dir.join("custom-initrd.cpio");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn example_suite_passes_and_leaves_nothing() {
    let s = Suite::new();
    let events = s.path().join("events.msgpack");
    let child = s
        .command(&[
            "--config",
            &examples_config(),
            "--json",
            "--save-events",
            events.to_str().unwrap(),
            "--junit",
            "all.xml",
            examples_dir().to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let reports = json_lines(&out);
    let frames = provium_protocol::events::read_all(std::fs::File::open(&events).unwrap()).unwrap();
    check_event_guarantees(&frames, reports.len());
    let files = std::fs::read_dir(examples_dir())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".test.lua"));
    assert_eq!(reports.len(), files.count(), "{reports:#?}");
    for r in &reports {
        assert_eq!(r["passed"], true, "{r:#}");
    }
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(s.leftovers(pid), Vec::<String>::new());

    // The whole run's JUnit, as a JUnit reader sees it: a suite per file,
    // a testcase per test of the JSON reports.
    let all = junitparser(&s.path().join("all.xml"));
    let tests: usize = reports.iter().map(|r| r["tests"].as_array().unwrap().len()).sum();
    assert_eq!(all["suites"].as_array().unwrap().len(), reports.len());
    assert_eq!(totals(&all)[0], tests as u64);
    assert_eq!(totals(&all)[1..3], [0, 0], "no failure, no error");
    // Two CI machines' shards, merged, count what the whole run counted.
    let dir = examples_dir();
    for k in 1..=2 {
        let shard = format!("count:{k}/2");
        let junit = format!("shard{k}.xml");
        let out = s.run(&[
            "--config",
            &examples_config(),
            "-q",
            "--partition",
            &shard,
            "--junit",
            &junit,
            dir.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(0), "{shard}");
    }
    assert_eq!(s.run(&["merge-junit", "merged.xml", "shard1.xml", "shard2.xml"]).status.code(), Some(0));
    let merged = junitparser(&s.path().join("merged.xml"));
    assert_eq!(totals(&merged), totals(&all));
    let names = |r: &serde_json::Value| {
        let mut v: Vec<String> =
            r["suites"].as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap().to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(names(&merged), names(&all), "every file once");
}

/// The reference's guarantees (12.3) over a whole run's event stream.
fn check_event_guarantees(frames: &[provium_protocol::events::EventFrame], files: usize) {
    use provium_protocol::events::EventKind as K;
    use std::collections::HashMap;
    assert!(frames.windows(2).all(|w| w[0].ts <= w[1].ts), "timestamps never go back");
    let first_dispatch = frames.iter().position(|f| matches!(f.event, K::FileDispatched { .. })).unwrap();
    let discovered: Vec<&str> = frames
        .iter()
        .filter_map(|f| if let K::FileDiscovered { path, .. } = &f.event { Some(path.as_str()) } else { None })
        .collect();
    assert_eq!(discovered.len(), files);
    let last_discovery = frames.iter().rposition(|f| matches!(f.event, K::FileDiscovered { .. })).unwrap();
    assert!(last_discovery < first_dispatch, "every file is discovered before any is dispatched");
    // Per file: how many file_dispatched, how many file_completed.
    let mut per_file: HashMap<&str, (usize, usize)> = HashMap::new();
    // (file, test) -> kinds in order
    let mut tests: HashMap<(String, String), Vec<&'static str>> = HashMap::new();
    let mut vms: HashMap<(Option<String>, String), i64> = HashMap::new();
    let mut builds: HashMap<String, i64> = HashMap::new();
    for f in frames {
        match &f.event {
            K::FileDispatched { path, .. } => per_file.entry(path).or_default().0 += 1,
            // Admission waits (the per-file overhead, PSI) come before the
            // file's dispatch, as the reference says. After it, only a boot
            // or claim of the running file may wait (provium reports those
            // too, as `pool_full` for more than the overhead).
            K::FileBlocked { path, waiting_for, reason }
                if per_file.get(path.as_str()).map(|p| p.0).unwrap_or(0) > 0 =>
            {
                let overhead = provium::runner::dispatch::PER_FILE_OVERHEAD;
                assert!(
                    reason == "pool_full" && *waiting_for != overhead,
                    "an admission wait after dispatch: {path} {waiting_for:?} {reason}"
                );
            }
            K::FileCompleted { path, .. } => per_file.entry(path).or_default().1 += 1,
            K::TestStarted { path, name, .. } => tests.entry((path.clone(), name.clone())).or_default().push("started"),
            K::TestPassed { path, name, .. } | K::TestFailed { path, name, .. } | K::TestSkipped { path, name, .. } => {
                tests.entry((path.clone(), name.clone())).or_default().push("end")
            }
            K::VmSpawned { file, vm_name, .. } => *vms.entry((file.clone(), vm_name.clone())).or_default() += 1,
            K::VmShutdown { file, vm_name, .. } => {
                let open = vms.entry((file.clone(), vm_name.clone())).or_default();
                *open -= 1;
                assert!(*open >= 0, "vm_shutdown without vm_spawned: {file:?} {vm_name}");
            }
            K::FixtureBuildStarted { path } => *builds.entry(path.clone()).or_default() += 1,
            K::FixtureBuildDone { path, .. } => *builds.entry(path.clone()).or_default() -= 1,
            _ => {}
        }
    }
    for path in &discovered {
        let (dispatched, completed) = per_file.get(path).copied().unwrap_or_default();
        assert_eq!((dispatched, completed), (1, 1), "{path}: one file_dispatched, one file_completed");
    }
    assert!(!tests.is_empty());
    for ((file, name), kinds) in &tests {
        assert!(kinds == &["started", "end"] || kinds == &["end"], "{file} {name}: {kinds:?}");
    }
    assert!(vms.values().all(|&open| open == 0), "vm_spawned/vm_shutdown paired: {vms:?}");
    assert!(builds.values().all(|&open| open == 0), "fixture builds paired: {builds:?}");
    assert!(matches!(frames.first().map(|f| &f.event), Some(K::RunStarted { .. })));
    assert!(matches!(frames.last().map(|f| &f.event), Some(K::RunFinished { .. })));
}

#[test]
fn framework_semantics() {
    let s = Suite::new();
    s.write(
        "framework.test.lua",
        r#"
test("t.name and log", function(t)
  t:log("hello from " .. t.name)
  t:assert_neq(1, 2)
end)
test("a caught assertion still fails the test", function(t)
  pcall(function() t:assert(false, "sticky") end)
end)
test("explicit fail", function(t) t:fail("nope") end)
test("skip from the body", function(t) t:skip("not today"); error("unreachable") end)
test("skip from meta", {skip = "by meta"}, function(t) error("unreachable") end)
test("assert_raises returns the message", function(t)
  local e = t:assert_raises(function() error("boom") end)
  t:assert_contains(e, "boom")
  local e2 = t:assert_raises(function() t:assert_eq(1, 2, "inner") end)
  t:assert_contains(e2, "inner: 1 ~= 2")
end)
test("lua errors carry file and line", function(t) local x = nil; return x.field end)
"#,
    );
    let out = s.run(&["--json", "framework.test.lua"]);
    assert_eq!(out.status.code(), Some(1));
    let r = &json_lines(&out)[0];
    let tests = r["tests"].as_array().unwrap();
    let by_name = |n: &str| tests.iter().find(|t| t["name"] == n).unwrap();
    assert_eq!(by_name("t.name and log")["status"], "passed");
    assert_eq!(by_name("t.name and log")["log"][0], "hello from t.name and log");
    let sticky = by_name("a caught assertion still fails the test");
    assert_eq!(sticky["status"], "failed");
    assert!(sticky["message"].as_str().unwrap().contains("framework.test.lua:7: sticky"), "{sticky}");
    assert_eq!(by_name("explicit fail")["status"], "failed");
    assert_eq!(by_name("skip from the body")["status"], "skipped");
    assert_eq!(by_name("skip from the body")["message"], "not today");
    assert_eq!(by_name("skip from meta")["message"], "skipped: by meta");
    assert_eq!(by_name("assert_raises returns the message")["status"], "passed");
    let lua_err = by_name("lua errors carry file and line");
    assert!(lua_err["message"].as_str().unwrap().starts_with("framework.test.lua:18:"), "{lua_err}");
}

#[test]
fn bad_input_is_reported_and_the_run_goes_on() {
    let s = Suite::new();
    let init = "#!/bin/sh\necho 'custom init is running, but no agent here'\nwhile true; do sleep 1; done\n";
    let initrd = initrd_with_init(s.path(), init);
    s.write(
        "provium.toml",
        &format!(
            "[profiles.nokernel]\nkernel = \"/nonexistent/vmlinuz\"\n\n\
             [profiles.noagent]\nkernel = \"{}\"\ninitrd = \"{}\"\ninject_agent = false\n\
             cmdline = \"{}\"\nagent_boot_timeout = 15\n\n\
             [profiles.panics]\nkernel = \"{}\"\ninitrd = \"{}\"\ninject_agent = false\n\
             cmdline = \"{} rdinit=/does-not-exist\"\n",
            vmlinux().display(),
            initrd.display(),
            provium::image::default_cmdline(),
            vmlinux().display(),
            initrd.display(),
            provium::image::default_cmdline(),
        ),
    );
    s.write("a_syntax.test.lua", "test(\"x\", function(t)\n  local = 1\nend)\n");
    s.write("b_profile.test.lua", "test(\"unknown profile\", function(t) provium:vm(\"v\", \"nope\") end)\n");
    s.write(
        "d_noagent.test.lua",
        "test(\"init never starts the agent\", function(t) provium:vm(\"v\", \"noagent\"):boot() end)\n",
    );
    s.write("f_panic.test.lua", "test(\"kernel panics\", function(t) provium:vm(\"v\", \"panics\"):boot() end)\n");
    s.write(
        "e_good.test.lua",
        "test(\"missing command is a result\", function(t)\n  local r = provium:vm(\"v\", \"default\"):boot():run(\"definitely-not-here\")\n  t:assert_eq(r.exit_code, 127)\nend)\n",
    );
    let child = s.command(&["--json", "."]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    eprintln!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1));
    let reports = json_lines(&out);
    assert_eq!(reports.len(), 5);

    let syntax = file(&reports, "a_syntax.test.lua");
    let msg = syntax["chunk_error"].as_str().unwrap();
    assert!(msg.contains("a_syntax.test.lua:2:"), "{msg}");

    let profile = &file(&reports, "b_profile.test.lua")["tests"][0];
    let msg = profile["message"].as_str().unwrap();
    assert!(msg.contains("b_profile.test.lua:1: profile `nope` is not defined"), "{msg}");
    assert!(msg.contains("available: default, noagent, nokernel"), "{msg}");

    // (A file using `nokernel` stops the run at load: see tests/messages.rs.)
    let noagent = &file(&reports, "d_noagent.test.lua")["tests"][0];
    let msg = noagent["message"].as_str().unwrap();
    assert!(msg.contains("agent did not come up within 15s"), "{msg}");
    assert!(msg.contains("custom init is running, but no agent here"), "console tail missing: {msg}");

    let panic = &file(&reports, "f_panic.test.lua")["tests"][0];
    let msg = panic["message"].as_str().unwrap();
    assert!(msg.contains("QEMU exited during boot"), "{msg}");
    assert!(msg.contains("Kernel panic"), "console tail missing: {msg}");

    assert_eq!(file(&reports, "e_good.test.lua")["passed"], true);
    assert_eq!(s.leftovers(pid), Vec::<String>::new());
}

#[test]
fn agent_as_pid1_shim_hands_pid1_to_the_image_init() {
    let s = Suite::new();
    let init = "#!/bin/sh\nmount -t proc proc /proc 2>/dev/null\necho ran > /init-ran\nwhile true; do sleep 1; done\n";
    let initrd = initrd_with_init(s.path(), init);
    s.write(
        "provium.toml",
        &format!(
            "[profiles.withinit]\nkernel = \"{}\"\ninitrd = \"{}\"\ncmdline = \"{}\"\n",
            vmlinux().display(),
            initrd.display(),
            provium::image::default_cmdline()
        ),
    );
    s.write(
        "shim.test.lua",
        r#"
test("image init is PID 1 and the agent serves beside it", function(t)
  local vm = provium:vm("v", "withinit"):boot()
  local r = vm:run("cat /proc/1/cmdline; echo; ls -l /proc/1/exe; ps")
  t:log(r.stdout .. r.stderr)
  t:assert_contains(r.stdout, "/init")
  local ok = false
  for _ = 1, 100 do
    if vm:run("test -f /init-ran || { sleep 0.1; false; }"):ok() then ok = true; break end
  end
  t:assert(ok, "the image's /init did not run")
  t:assert_eq(vm:read_file("/init-ran"), "ran\n")
end)
"#,
    );
    let out = s.run(&["--json", "shim.test.lua"]);
    let r = &json_lines(&out)[0];
    assert_eq!(r["passed"], true, "{r:#}");
}

/// Starts provium on a file that boots a VM and then idles, and returns
/// once its QEMU process exists (mid-boot).
fn start_slow_boot(s: &Suite) -> (std::process::Child, u32) {
    s.write(
        "slow.test.lua",
        "test(\"boot\", function(t) provium:vm(\"v\", \"default\"):boot(); os.execute(\"sleep 30\") end)\n",
    );
    let child = s.command(&["slow.test.lua"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.leftovers(pid).iter().all(|l| !l.starts_with("process")) {
        assert!(Instant::now() < deadline, "QEMU never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, pid)
}

#[test]
fn ctrl_c_during_boot_leaves_nothing_behind() {
    let s = Suite::new();
    let (mut child, pid) = start_slow_boot(&s);
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child process; no memory is involved.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_eq!(s.leftovers(pid), Vec::<String>::new());
}

fn sh(cmd: &str) -> provium_protocol::ExecRequest {
    provium_protocol::ExecRequest { argv: vec!["sh".into(), "-c".into(), cmd.into()], ..Default::default() }
}

#[test]
fn agent_survives_the_host_disconnecting_and_reconnecting() {
    use provium::vm::{BootOpts, Vm};
    let images = std::sync::Arc::new(provium::image::Images::new(Default::default()));
    let mut vm = Vm::new("rc", "default", BootOpts::default(), images, provium::vmm::Accel::Tcg);
    vm.boot(&BootOpts::default()).expect("boot");
    vm.write_file("/tmp/state", b"kept", 0o644).unwrap();

    // A command in flight when the host goes away fails cleanly...
    let old = vm.agent_client().unwrap();
    let inflight = std::thread::spawn(move || old.exec(sh("sleep 3; echo late"), b""));
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        vm.reconnect_agent().expect("reconnect");
    }
    let err = inflight.join().unwrap().expect_err("in-flight exec must fail on disconnect");
    assert!(err.to_string().contains("connection closed"), "{err}");

    // ...and the new session works, with the guest's state intact.
    assert_eq!(vm.read_file("/tmp/state").unwrap(), b"kept");
    let out = vm.exec(sh("echo again"), b"").unwrap();
    assert_eq!(out.stdout, b"again\n");
    vm.shutdown();
}

#[test]
fn files_larger_than_one_frame_and_per_file_timeout() {
    let s = Suite::new();
    s.write(
        "big.test.lua",
        r#"
test("a 20 MiB file goes in and out", function(t)
  local vm = provium:vm("v", "default"):boot()
  local data = string.rep("0123456789abcdef", 20 * 65536)
  vm:write_file("/tmp/big", data)
  t:assert_eq(vm:stat("/tmp/big").size, #data)
  t:assert_eq(vm:run("md5sum < /tmp/big").stdout, vm:run("md5sum", {stdin = data}).stdout)
  t:assert(vm:read_file("/tmp/big") == data, "read back differs")
end)
"#,
    );
    s.write(
        "hang.test.lua",
        "test(\"hangs\", function(t) provium:vm(\"v\", \"default\"):boot():run(\"sleep 600\") end)\n\
         test(\"after\", function(t) end)\n",
    );
    let out = s.run(&["--json", "--timeout", "20s", "."]);
    assert_eq!(out.status.code(), Some(1));
    let reports = json_lines(&out);
    assert_eq!(file(&reports, "big.test.lua")["passed"], true);
    let hang = file(&reports, "hang.test.lua");
    assert_eq!(hang["timeout"], "timed_out");
    let msg = hang["tests"][0]["message"].as_str().unwrap();
    assert!(msg.contains("file timeout (20s) exceeded"), "{msg}");
    assert!(hang["tests"][1]["message"].as_str().unwrap().contains("not run"), "{hang}");
}

#[test]
fn missing_qemu_is_named_with_the_fix() {
    let s = Suite::new();
    s.write("q.test.lua", "test(\"boot\", function(t) provium:vm(\"v\", \"default\"):boot() end)\n");
    let out = s.command(&["--json", "q.test.lua"]).env("PROVIUM_QEMU", "qemu-not-installed").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let r = &json_lines(&out)[0];
    let msg = r["tests"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("QEMU (`qemu-not-installed`) is not installed or not on PATH; install it with `scripts/setup`"),
        "{msg}"
    );
}

#[test]
fn list_and_doctor() {
    let s = Suite::new();
    s.write("a/one.test.lua", "");
    s.write("b/two.test.lua", "");
    s.write("b/helper.lua", "");
    let out = s.run(&["list"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("a/one.test.lua") && text.contains("b/two.test.lua") && !text.contains("helper"), "{text}");
    assert!(text.contains("2 test file(s) found"), "{text}");

    let out = s.run(&["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ok   qemu:") && text.contains("QEMU emulator version"), "{text}");
    assert!(text.contains("ok   default guest: kernel"), "{text}");
    assert!(text.contains("ok   accelerator: tcg"), "{text}");
    assert_eq!(out.status.code(), Some(0));

    s.write("provium.toml", "[profiles.x]\nkernal = 1\n");
    let out = s.run(&["list"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("provium: cannot parse `provium.toml`: line 2, column 1: unknown field `kernal`"), "{err}");
}

#[test]
fn qemu_dies_with_provium_and_the_next_run_sweeps_its_scratch_dir() {
    let s = Suite::new();
    let (mut child, pid) = start_slow_boot(&s);
    // SIGKILL: no handler runs; PR_SET_PDEATHSIG must take QEMU down.
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.leftovers(pid).iter().any(|l| l.starts_with("process")) {
        assert!(Instant::now() < deadline, "QEMU outlived provium: {:?}", s.leftovers(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    // What a SIGKILL leaves: the scratch dir, and the guest's RAM file in
    // /dev/shm (when there is room for it there); the next run sweeps both.
    let left = s.leftovers(pid);
    assert!(left.iter().any(|l| l.starts_with("scratch dir")), "{left:?}");
    assert!(left.iter().all(|l| l.starts_with("scratch dir") || l.starts_with("RAM dir")), "{left:?}");
    s.write("noop.test.lua", "test(\"nothing\", function(t) end)\n");
    let out = s.run(&["noop.test.lua"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(s.leftovers(pid), Vec::<String>::new());
}

#[test]
fn missing_guest_inputs_name_the_setup_command() {
    let s = Suite::new();
    s.write("g.test.lua", "test(\"boot\", function(t) provium:vm(\"v\", \"default\"):boot() end)\n");
    let out = s
        .command(&["--json", "g.test.lua"])
        .env("PROVIUM_GUEST_DIR", s.path().join("no-guest"))
        .env("PROVIUM_CACHE_DIR", s.path().join("cache"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let r = &json_lines(&out)[0];
    let msg = r["tests"][0]["message"].as_str().unwrap();
    assert!(msg.contains("g.test.lua:1: vm `v`: cannot boot: cannot prepare the default guest"), "{msg}");
    assert!(msg.contains("run `scripts/setup`"), "{msg}");
}

#[test]
fn filter_keeps_matching_files() {
    let s = Suite::new();
    s.write("keep_me.test.lua", "test(\"a\", function(t) end)\n");
    s.write("drop_me.test.lua", "test(\"b\", function(t) t:fail() end)\n");
    let out = s.run(&["--json", "--filter", "keep", "."]);
    assert_eq!(out.status.code(), Some(0));
    let reports = json_lines(&out);
    assert_eq!(reports.len(), 1);
    assert!(reports[0]["path"].as_str().unwrap().ends_with("keep_me.test.lua"));
}

#[test]
fn a_fast_writer_and_a_slow_reader_lose_no_bytes() {
    // The guest appends ~8 MiB as fast as it can while the test reads the
    // tail slowly; the credit window makes the agent wait instead of the host
    // buffering, and every byte arrives in order.
    let s = Suite::new();
    s.write(
        "flood.test.lua",
        r#"
test("flood", function(t)
  local vm = provium:vm("v", "default"):boot()
  vm:write_file("/tmp/flood", "")
  local tail = vm:tail_file("/tmp/flood", {start = "beginning"})
  local writer = vm:run_async("i=0; while [ $i -lt 2048 ]; do printf '%04095d\n' $i; i=$((i+1)); done >> /tmp/flood")
  local got, n = {}, 0
  while n < 2048 * 4096 do
    local chunk = tail:next("20s")
    t:assert(chunk ~= nil, "stream stalled at " .. n .. " bytes")
    got[#got + 1] = chunk
    n = n + #chunk
    os.execute("sleep 0.05") -- read slowly: the 1 MiB window fills
  end
  writer:wait("60s"):assert_ok()
  local data = table.concat(got)
  t:assert_eq(#data, 2048 * 4096)
  t:assert(data == vm:read_file("/tmp/flood"), "streamed bytes differ from the file")
  for i = 0, 2047, 511 do
    t:assert_eq(data:sub(i * 4096 + 1, i * 4096 + 4096), string.rep("0", 4095 - #tostring(i)) .. i .. "\n")
  end
end)
"#,
    );
    let out = s.run(&["--json", "flood.test.lua"]);
    let r = &json_lines(&out)[0];
    assert_eq!(r["passed"], true, "{r:#}");
}

/// Without `/dev/shm` (here: `PROVIUM_SHM=off`) guests get anonymous
/// memory and snapshots carry RAM in QEMU's stream: slower, same results.
#[test]
fn snapshots_work_without_shared_memory() {
    let s = Suite::new();
    let example = examples_dir().join("snapshots.test.lua");
    let out = s.command(&["--json", example.to_str().unwrap()]).env("PROVIUM_SHM", "off").output().unwrap();
    let reports = json_lines(&out);
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0]["passed"], true, "{:#}", reports[0]);
    assert_eq!(out.status.code(), Some(0));
}

/// The KVM probe's command line is the real launch builder's: the same argv
/// with `-accel tcg` in place of `-accel kvm -cpu host` boots the real guest
/// to its power-off. Machines without KVM (CI) would otherwise never notice a
/// probe argv QEMU rejects, and every KVM host would silently use TCG.
#[test]
fn the_kvm_probe_argv_boots_under_tcg() {
    use provium::vmm::accel::{probe, probe_spec};
    use provium::vmm::{argv::launch_argv, Accel};
    let s = Suite::new();
    let images = provium::image::Images::new(Default::default());
    let guest = images.default_guest().expect("default guest (run scripts/setup)");
    let kvm = launch_argv(&probe_spec(Accel::Kvm, &guest.vmlinux, &guest.initrd, s.path())).join(" ");
    let tcg = launch_argv(&probe_spec(Accel::Tcg, &guest.vmlinux, &guest.initrd, s.path())).join(" ");
    assert_eq!(kvm.replace("-accel kvm -cpu host", "-accel tcg"), tcg);
    let qemu = provium::vmm::process::qemu_binary();
    let took = probe(&qemu, Accel::Tcg, &guest.vmlinux, &guest.initrd, Duration::from_secs(120));
    assert!(took.is_ok(), "the probe's argv does not boot under TCG: {took:?}");
}

fn vm(name: &str) -> provium::vm::Vm {
    let images = std::sync::Arc::new(provium::image::Images::new(Default::default()));
    provium::vm::Vm::new(name, "default", Default::default(), images, provium::vmm::Accel::Tcg)
}

/// A boot whose clock cannot be set (a time past what the kernel accepts)
/// fails naming the step, and leaves no armed kill switch behind: QEMU is
/// gone, and its pid may be reused by another process.
#[test]
fn a_failed_boot_disarms_its_kill_switch() {
    let mut v = vm("clock");
    let opts = provium::vm::BootOpts { initial_time: Some(8.5e9), ..Default::default() };
    let e = v.boot(&opts).expect_err("the kernel refuses a wall clock in the 23rd century");
    let text = provium::errors::chain(&e);
    assert!(text.contains("boot (initial_time)"), "{text}");
    assert_eq!(v.kill_switch().armed(), None, "{text}");
    assert_eq!(v.qemu_pid(), None);
}

/// A reset that fails says "reset failed", not "boot failed".
#[test]
fn a_failed_reset_names_the_reset() {
    let mut v = vm("reset");
    v.boot(&Default::default()).unwrap();
    assert!(v.kill_switch().armed().is_some());
    v.kill_switch().kill("this test");
    std::thread::sleep(Duration::from_millis(300));
    let text = provium::errors::chain(&v.reset().expect_err("QEMU is gone"));
    assert!(text.starts_with("vm `reset`: reset failed"), "{text}");
    assert!(!text.contains("boot failed"), "{text}");
}

/// `todo(reason)` at file scope reports every test of the file as skipped
/// with that reason, and runs no body.
#[test]
fn a_file_scope_todo_skips_every_test_without_running_it() {
    let s = Suite::new();
    s.write(
        "later.test.lua",
        "todo(\"the feature is not built yet\")\n\
         test(\"one\", function(t) error(\"never runs\") end)\n\
         test(\"two\", function(t) error(\"never runs\") end)\n",
    );
    let out = s.run(&["--json", "later.test.lua"]);
    assert_eq!(out.status.code(), Some(0));
    let reports = json_lines(&out);
    let tests = reports[0]["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 2);
    for t in tests {
        assert_eq!(t["status"], "skipped", "{t}");
        assert_eq!(t["message"], "todo: the feature is not built yet", "{t}");
    }
}

/// The shards of `examples/` (`--partition hash:K/N`, `count:K/N`) cover
/// every file exactly once, for N = 1, 2, 3.
#[test]
fn partitions_of_the_examples_cover_every_file_exactly_once() {
    let s = Suite::new();
    let listed = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["list"];
        args.extend_from_slice(extra);
        let dir = examples_dir();
        args.push(dir.to_str().unwrap());
        let out = s.run(&args);
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.ends_with(".test.lua"))
            .map(|l| l.trim().to_string())
            .collect()
    };
    let all = listed(&[]);
    assert!(all.len() > 10, "{all:?}");
    for kind in ["hash", "count"] {
        for n in 1..=3 {
            let mut union = Vec::new();
            for k in 1..=n {
                union.extend(listed(&["--partition", &format!("{kind}:{k}/{n}")]));
            }
            union.sort();
            let mut expected = all.clone();
            expected.sort();
            assert_eq!(union, expected, "{kind}:K/{n}");
        }
    }
    let out = s.run(&["--partition", "count:3/2", "list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--partition `count:3/2`: K must be from 1 to N"));
}

#[test]
fn the_progress_bar_is_drawn_on_a_terminal_only_and_cleared_before_results() {
    let s = Suite::new();
    s.write(
        "sleepy.test.lua",
        "local vm = provium:vm(\"s\", \"default\"):boot()\n\
         test(\"sleeps a bit\", function(t) vm:run(\"sleep 2\"):assert_ok() end)\n",
    );
    let (code, tty) = s.run_in_terminal(&["sleepy.test.lua"], &[]);
    assert_eq!(code, Some(0), "{tty:?}");
    assert!(!tty.contains("0/0 files"), "drawn once the run's size is known: {tty:?}");
    for text in ["0/1 files · booting", "booting · 1 vms", "1 vms · 1 tests", "[1/1] PASS sleepy.test.lua (1 passed"]
    {
        assert!(tty.contains(text), "{text:?} in {tty:?}");
    }
    // Cleared before each result and at the end: the last bar is erased
    // before the summary, and nothing of it comes after.
    let clear = "\r\x1b[2K";
    let result = tty.find("[1/1] PASS").unwrap();
    assert!(tty[..result].ends_with(clear), "cleared before the result: {tty:?}");
    let last_bar = tty.rfind(" files · ").unwrap();
    let summary = tty.find("1 file(s); 1 passed").unwrap();
    assert!(last_bar < summary && tty[last_bar..summary].contains(clear), "cleared at the end: {tty:?}");
    assert_eq!(tty[last_bar..summary].rsplit(clear).next(), Some("\r\n"), "{tty:?}");

    for (args, env) in [(&["sleepy.test.lua"][..], &[("CI", "true")][..]), (&["--json", "sleepy.test.lua"], &[])] {
        let (code, tty) = s.run_in_terminal(args, env);
        assert_eq!(code, Some(0), "{tty:?}");
        assert!(tty.contains("sleepy.test.lua"), "{tty:?}");
        for bar in ["booting", " files · ", "vms", "[1/1]", "\x1b[2K"] {
            assert!(!tty.contains(bar), "no {bar:?} with {args:?} {env:?}: {tty:?}");
        }
    }
}
