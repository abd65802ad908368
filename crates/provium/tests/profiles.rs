//! Dynamic profiles end to end: a `from_dir` profile whose `build` command
//! makes its kernel and initramfs in `{out}`, run once per run before the
//! first boot, skipped with `--no-build`, run by `provium prepare`; and the
//! errors of a failing build, an unknown profile, a bad `base`.

mod common;
use common::{file, json_lines, Suite};

/// A profile directory whose build copies the default guest into `{out}`
/// and counts its runs in `runs`.
fn dynamic_profile(s: &Suite) {
    let images = provium::image::Images::new(Default::default());
    let guest = images.default_guest().expect("default guest (run scripts/setup)");
    s.write(
        "profiles/copied/profile.provium.toml",
        "build = \"./build.sh {out}\"\nkernel = \"{out}/vmlinux\"\ninitrd = \"{out}/initrd\"\n\
         cmdline = \"console=ttyS0 loglevel=5\"\nmemory = \"256M\"\n",
    );
    let script = format!(
        "#!/bin/sh\nset -e\necho \"building into $1 (PROVIUM_BUILD_DIR=$PROVIUM_BUILD_DIR)\"\ncp {} {} \"$1/\"\necho run >> runs\n",
        guest.vmlinux.display(),
        guest.initrd.display()
    );
    let build = s.write("profiles/copied/build.sh", &script);
    std::fs::set_permissions(&build, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    s.write("provium.toml", "[profiles]\nfrom_dir = \"profiles\"\n");
    s.write(
        "boot.test.lua",
        "test(\"boots what the build made\", function(t)\n  local vm = provium:vm(\"v\", \"copied\"):boot()\n  \
         t:assert_eq(vm:run(\"echo up\").stdout, \"up\\n\")\n  \
         t:assert(vm:run(\"grep MemTotal /proc/meminfo\").stdout:match(\"%d+\") + 0 < 300000, \"the profile's memory\")\nend)\n",
    );
}

#[test]
fn a_dynamic_profile_builds_once_per_run_and_boots_what_it_built() {
    let s = Suite::new();
    dynamic_profile(&s);
    let out_dir = s.path().join("out");
    let runs = s.path().join("profiles/copied/runs");
    let build_env = [("PROVIUM_BUILD_DIR", out_dir.to_str().unwrap())];

    let mut c = s.command(&["--json", "boot.test.lua"]);
    c.envs(build_env);
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(file(&json_lines(&out), "boot.test.lua")["passed"], true);
    assert!(
        stderr.contains(&format!("provium: building profile `copied` → {}", out_dir.join("copied").display())),
        "{stderr}"
    );
    // The build's stdout is on stderr: stdout is the JSON stream.
    assert!(stderr.contains("building into"), "{stderr}");
    assert!(stderr.contains(&format!("PROVIUM_BUILD_DIR={}", out_dir.join("copied").display())), "{stderr}");
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\n", "built once, in the profile's directory");

    // --no-build boots what {out} holds.
    let mut c = s.command(&["--no-build", "--json", "boot.test.lua"]);
    c.envs(build_env);
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\n", "--no-build ran nothing");

    // provium prepare builds without booting.
    let mut c = s.command(&["prepare"]);
    c.envs(build_env);
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "provium prepare: 1 profile(s) ready\n");
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\nrun\n");
    let out = s.run(&["prepare", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("prepare: profile `nope` not found in `provium.toml` (profiles: copied)"), "{err}");
}

#[test]
fn a_failing_build_stops_the_run_with_its_stderr() {
    let s = Suite::new();
    s.write(
        "provium.toml",
        "[profiles.broken]\nbuild = \"echo compiling; echo 'cc: error: main.c: No such file or directory' >&2; exit 3\"\n\
         kernel = \"{out}/bzImage\"\n",
    );
    s.write("b.test.lua", "test(\"never\", function(t) provium:vm(\"v\", \"broken\"):boot() end)\n");
    let mut c = s.command(&["b.test.lua"]);
    c.env("PROVIUM_BUILD_DIR", s.path().join("out"));
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "provium: profile `broken`: build command failed (exit code 3); the end of its stderr:\n  | cc: error: main.c: \
             No such file or directory"
        ),
        "{err}"
    );
    assert!(!err.contains("FAIL"), "no test ran: {err}");
}

#[test]
fn profile_mistakes_are_config_errors() {
    let s = Suite::new();
    for (toml, want) in [
        ("[profiles.w]\nbase = \"arch\"\n", "`profiles.w.base`: unknown base `arch` (provium builds: \"debian\")"),
        (
            "[profiles.w]\nbase = \"debian\"\ninitrd = \"x\"\n",
            "`profiles.w.initrd`: cannot be set with base = \"debian\"",
        ),
        (
            "[profiles.w]\nkernel = \"/k\"\ndisks = [{ size = 1 }, { size = 2, id = \"disk0\" }]\n",
            "disk id `disk0` is used twice",
        ),
    ] {
        s.write("provium.toml", toml);
        s.write("a.test.lua", "test(\"x\", function() provium:vm(\"v\", \"w\") end)\n");
        let out = s.run(&["a.test.lua"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{toml}: {err}");
        assert!(err.contains(want), "{toml}: {err}");
    }
}

/// A Debian profile that names a package the mirror lacks, or a suite it
/// lacks: one line naming the package (or suite) and the profile, exit 2
/// before any test, and no image left in the cache.
#[test]
fn debian_profiles_with_unknown_packages_or_suites_stop_the_run() {
    let s = Suite::new();
    let cache = s.path().join("cache");
    for (toml, want) in [
        (
            "[profiles.web]\nbase = \"debian\"\npackages = [\"python3\", \"no-such-package-provium\"]\n",
            "profile `web`: cannot build its Debian userland: package `no-such-package-provium` is not in Debian bookworm",
        ),
        ("[profiles.web]\nbase = \"debian\"\nsuite = \"nosuchsuite\"\n", "suite `nosuchsuite`"),
    ] {
        s.write("provium.toml", toml);
        s.write("w.test.lua", "test(\"never\", function(t) provium:vm(\"v\", \"web\"):boot() end)\n");
        let mut c = s.command(&["w.test.lua"]);
        c.env("PROVIUM_CACHE_DIR", &cache);
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{toml}: {err}");
        assert!(err.contains(want), "{toml}: {err}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("FAIL"), "no test ran");
        let images = cache.join("debian/images");
        let left: Vec<_> = std::fs::read_dir(&images)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| !n.ends_with(".lock")).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "nothing half-built in the image cache: {left:?}");
    }
}
