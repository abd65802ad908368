//! Fixtures end to end, with the real binary and real guests: one build
//! shared by files running at once, rebuilds when an input changes, and a
//! corrupt cache entry rebuilt instead of failing the run.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

mod common;
use common::{json_lines, vmlinux, Suite};

/// How many times the builder ran: it appends a line to `builds.log` (host
/// side, relative to the suite directory) each time.
fn builds(s: &Suite) -> usize {
    std::fs::read_to_string(s.path().join("builds.log")).map(|t| t.lines().count()).unwrap_or(0)
}

fn run_all_pass(s: &Suite, args: &[&str]) -> String {
    let mut cmd = s.command(args);
    cmd.env("PROVIUM_FIXTURE_CACHE", s.path().join("cache")).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("run provium");
    let pid = child.id();
    let out = child.wait_with_output().expect("run provium");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!(
        "--- provium {args:?} exit={:?}\n{}\n--- stderr\n{stderr}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(0), "run failed: {stderr}");
    for r in json_lines(&out) {
        assert_eq!(r["passed"], true, "{r}");
    }
    // Builders' VMs, restored VMs, staged snapshots: nothing stays.
    assert_eq!(s.leftovers(pid), Vec::<String>::new());
    stderr
}

fn set_mtime(path: &Path, t: SystemTime) {
    std::fs::File::options().write(true).open(path).unwrap().set_modified(t).unwrap();
}

#[test]
fn a_fixture_is_built_once_reused_and_rebuilt_when_an_input_changes() {
    let s = Suite::new();
    // A profile whose kernel is a copy we can "edit" (its mtime is part of
    // every fixture's key).
    let kernel = s.path().join("kernel/vmlinux");
    std::fs::create_dir_all(kernel.parent().unwrap()).unwrap();
    std::fs::copy(vmlinux(), &kernel).unwrap();
    s.write("provium.toml", "[profiles.copy]\nkernel = \"kernel/vmlinux\"\n");
    s.write(
        "fixtures/base.fixture.lua",
        r#"
local prep = require("helpers.prep")
local log = io.open("builds.log", "a"); log:write("built\n"); log:close()
local vm = provium:vm("base", "default"):boot()
prep.stamp(vm)
return vm:snapshot()
"#,
    );
    s.write("helpers/prep.lua", "return { stamp = function(vm) vm:push_file('stamp.txt', '/etc/stamp') end }\n");
    s.write("helpers/stamp.txt", "v1");
    for i in 1..=3 {
        s.write(
            &format!("use{i}.test.lua"),
            r#"
local vm = provium:vm_fixture("fixtures/base")
test("starts from the fixture", function(t)
  t:assert_eq(vm:read_file("/etc/stamp"), "v1")
  vm:write_file("/etc/stamp", "changed by a test") -- does not reach the cache
end)
"#,
        );
    }
    let args = ["--json", "-j", "3", "."];

    // Three files at once: one builds, the others wait and restore.
    let stderr = run_all_pass(&s, &args);
    assert_eq!(builds(&s), 1, "built once");
    assert_eq!(stderr.matches("building fixture `fixtures/base`").count(), 1);
    assert!(stderr.contains("is being built by"), "the others waited: {stderr}");

    // Cached: no build at all.
    run_all_pass(&s, &args);
    assert_eq!(builds(&s), 1, "reused");

    // Editing the builder, a helper it requires, or the kernel rebuilds.
    s.write(
        "fixtures/base.fixture.lua",
        &(std::fs::read_to_string(s.path().join("fixtures/base.fixture.lua")).unwrap() + "-- edited\n"),
    );
    run_all_pass(&s, &args);
    assert_eq!(builds(&s), 2, "builder edited");
    s.write(
        "helpers/prep.lua",
        "return { stamp = function(vm) vm:push_file('stamp.txt', '/etc/stamp') end } -- edited\n",
    );
    run_all_pass(&s, &args);
    assert_eq!(builds(&s), 3, "helper edited");
    set_mtime(&kernel, SystemTime::now() - Duration::from_secs(3600));
    run_all_pass(&s, &args);
    assert_eq!(builds(&s), 4, "kernel changed");
    // A host file the helper pushes (a literal path) is an input too.
    s.write("helpers/stamp.txt", "v1");
    set_mtime(&s.path().join("helpers/stamp.txt"), SystemTime::now() - Duration::from_secs(7200));
    run_all_pass(&s, &args);
    assert_eq!(builds(&s), 5, "pushed file changed");

    // A corrupt entry is evicted and rebuilt; the run still passes.
    let cache = s.path().join("cache");
    let mut corrupted = 0;
    for e in std::fs::read_dir(&cache).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "snap") {
            std::fs::write(e.path(), b"not zstd").unwrap();
            corrupted += 1;
        }
    }
    assert!(corrupted > 0);
    let stderr = run_all_pass(&s, &["--json", "use1.test.lua"]);
    assert!(stderr.contains("evicting and rebuilding"), "{stderr}");
    assert_eq!(builds(&s), 6, "rebuilt after corruption");
}

#[test]
fn fixture_mistakes_are_reported() {
    let s = Suite::new();
    s.write(
        "fixtures/lab.fixture.lua",
        "provium:vm('a', 'default', {memory = '256M'}):boot()\n\
         provium:lab('dc1'):vm('w', 'default', {memory = '256M'}):boot()\n\
         provium.dc1.w:write_file('/tmp/role', 'web')\n\
         return provium:snapshot()\n",
    );
    s.write("fixtures/nothing.fixture.lua", "return 42\n");
    s.write("a.test.lua", "test('x', function(t) provium:vm_fixture('fixtures/lab') end)\n");
    s.write("b.test.lua", "test('x', function(t) provium:vm_fixture('fixtures/nothing') end)\n");
    s.write("c.test.lua", "test('x', function(t) provium:vm_fixture('fixtures/missing') end)\n");
    s.write(
        "d.test.lua",
        "local lab = provium:lab_fixture('fixtures/lab')\n\
         test('x', function(t)\n\
           lab.a:run('true'):assert_ok()\n\
           t:assert_eq(lab.dc1.w:read_file('/tmp/role'), 'web')\n\
         end)\n",
    );
    let mut cmd = s.command(&["--json", "."]);
    cmd.env("PROVIUM_FIXTURE_CACHE", s.path().join("cache"));
    let out = cmd.output().unwrap();
    let reports = json_lines(&out);
    let text = |suffix: &str| common::file(&reports, suffix).to_string();
    assert!(text("a.test.lua").contains("vm_fixture `fixtures/lab` returned a lab snapshot"), "{}", text("a.test.lua"));
    assert!(text("b.test.lua").contains("must return vm:snapshot() or provium:snapshot(), but returned number"));
    assert!(text("c.test.lua").contains("fixture `fixtures/missing` not found in any test root"));
    assert_eq!(common::file(&reports, "d.test.lua")["passed"], true);
    assert_eq!(out.status.code(), Some(1));
}
