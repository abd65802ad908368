//! Tests of the whole pipeline against the real Debian mirror. They share one apt root and
//! one .deb directory (`$PROVIUM_DEBIAN_TEST_SHARED`, else `<tmp>/provium-debian-tests`) so
//! the archive is downloaded once, while every test gets its own image directory.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use super::*;

fn shared_dirs(images: &Path) -> CacheDirs {
    let shared = std::env::var_os("PROVIUM_DEBIAN_TEST_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("provium-debian-tests"));
    CacheDirs { apt: shared.join("apt"), debs: shared.join("debs"), images: images.to_owned() }
}

fn kernel() -> GuestInputs {
    GuestInputs::locate().unwrap_or_else(|e| {
        panic!("the guest kernel `scripts/setup` installs is missing: {}", crate::errors::chain(&e))
    })
}

fn print_steps() -> impl FnMut(Step) {
    let t = Instant::now();
    move |s| eprintln!("[{:6.2} s] debian: {s}", t.elapsed().as_secs_f64())
}

/// `sqfs2tar image | tar -tv`, one line per entry: `mode uid/gid path[ -> target]`.
fn listing(image: &Path) -> Vec<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("sqfs2tar --no-skip '{}' | tar --numeric-owner -tvf -", image.display()))
        .output()
        .expect("run sqfs2tar (squashfs-tools-ng)");
    assert!(out.status.success(), "sqfs2tar | tar failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f[5..].join(" ");
            format!("{} {} {}", f[0], f[1], path.trim_start_matches("./").trim_end_matches('/'))
        })
        .collect()
}

fn entry<'a>(list: &'a [String], path: &str) -> &'a str {
    list.iter()
        .find(|l| {
            let p = l.splitn(3, ' ').nth(2).unwrap_or("");
            p == path || p.starts_with(&format!("{path} -> ")) || p.starts_with(&format!("{path} link to "))
        })
        .unwrap_or_else(|| panic!("`{path}` is not in the image"))
}

#[test]
fn key_is_stable_and_order_independent() {
    let p =
        |name: &str, version: &str| apt::Package { name: name.into(), version: version.into(), arch: "amd64".into() };
    let spec = DebianSpec::with_packages(&["python3"]);
    let a = image_key(&spec, &[p("bash", "5.2"), p("dash", "0.5")], "6.1.0-57-cloud-amd64", "m1");
    let b = image_key(&spec, &[p("dash", "0.5"), p("bash", "5.2")], "6.1.0-57-cloud-amd64", "m1");
    assert_eq!(a, b);
    assert_eq!(a.len(), 16);
    assert_ne!(a, image_key(&spec, &[p("bash", "5.3"), p("dash", "0.5")], "6.1.0-57-cloud-amd64", "m1"));
    assert_ne!(a, image_key(&spec, &[p("bash", "5.2"), p("dash", "0.5")], "6.1.0-57-cloud-amd64", "m2"));
    let lz4 = DebianSpec { compression: Compression::Lz4, ..spec.clone() };
    assert_ne!(a, image_key(&lz4, &[p("bash", "5.2"), p("dash", "0.5")], "6.1.0-57-cloud-amd64", "m1"));
    assert_eq!(Compression::from_name("lz4"), Some(Compression::Lz4));
    assert_eq!(Compression::from_name("zstd"), Some(Compression::default()));
    assert_eq!(Compression::from_name("bzip2"), None);
}

#[test]
fn unknown_package_is_named() {
    let images = tempfile::tempdir().unwrap();
    let spec = DebianSpec::with_packages(&["python3", "nosuchpkg-xyz"]);
    let err = prepare_in(&spec, &kernel(), &shared_dirs(images.path()), false, &mut print_steps()).unwrap_err();
    assert!(
        matches!(&err, DebianError::UnknownPackage { package, suite } if package == "nosuchpkg-xyz" && suite == "bookworm"),
        "{err}"
    );
    let spec = DebianSpec::with_packages(&["--option"]);
    let err = prepare_in(&spec, &kernel(), &shared_dirs(images.path()), false, &mut |_| {}).unwrap_err();
    assert!(matches!(err, DebianError::InvalidPackage(_)), "{err}");
}

#[test]
fn unknown_suite_is_reported() {
    let images = tempfile::tempdir().unwrap();
    let spec = DebianSpec { suite: "nosuchsuite".into(), ..DebianSpec::with_packages(&["bash"]) };
    let err = prepare_in(&spec, &kernel(), &shared_dirs(images.path()), false, &mut print_steps()).unwrap_err();
    assert!(matches!(&err, DebianError::UnknownSuite { suite, .. } if suite == "nosuchsuite"), "{err}");
    assert!(err.to_string().contains("http://deb.debian.org/debian"), "{err}");
}

#[test]
fn an_unreachable_mirror_gives_apts_complaint() {
    let images = tempfile::tempdir().unwrap();
    let apt = tempfile::tempdir().unwrap();
    let dirs = CacheDirs { apt: apt.path().to_owned(), ..shared_dirs(images.path()) };
    let spec = DebianSpec { mirror: "http://127.0.0.1:9/debian".into(), ..DebianSpec::with_packages(&["bash"]) };
    let err = prepare_in(&spec, &kernel(), &dirs, false, &mut |_| {}).unwrap_err();
    assert!(matches!(err, DebianError::Apt { action: "update", .. }), "{err}");
    assert!(err.to_string().contains("Connection refused"), "{err}");
}

/// Lists from an earlier update, then the mirror goes away: a warning, and the old lists.
#[test]
fn old_lists_are_used_when_an_update_fails() {
    let apt = tempfile::tempdir().unwrap();
    let images = tempfile::tempdir().unwrap();
    let shared = shared_dirs(images.path());
    // Make sure the shared lists exist, then copy them under the name of a dead mirror.
    let good = apt::AptRoot::open(&shared.apt, DEFAULT_MIRROR, DEFAULT_SUITE).unwrap();
    let lock = good.lock().unwrap();
    good.update_if_needed(false, &mut |_| {}).unwrap();
    let dead = "http://127.0.0.1:9/debian";
    let root = apt::AptRoot::open(apt.path(), dead, DEFAULT_SUITE).unwrap();
    let (from, to) = (good.lists_dir(), root.lists_dir());
    for e in std::fs::read_dir(&from).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix("deb.debian.org_debian_dists_") {
            std::fs::copy(e.path(), to.join(format!("127.0.0.1:9_debian_dists_{rest}"))).unwrap();
        }
    }
    drop(lock);
    let mut steps = Vec::new();
    root.update_if_needed(true, &mut |s| steps.push(s)).unwrap();
    assert!(
        matches!(steps.as_slice(), [Step::Updating { .. }, Step::Warning(w)] if w.contains("Connection refused") && w.contains("last successful update")),
        "{steps:?}"
    );
    let (pkgs, _) = root.resolve(&["bash".to_owned()]).unwrap();
    assert!(pkgs.iter().any(|p| p.name == "bash"));
}

#[test]
fn builds_python3_curl_once_then_reuses_and_rebuilds_after_a_kill() {
    let kernel = kernel();
    let images = tempfile::tempdir().unwrap();
    let dirs = shared_dirs(images.path());
    let spec = DebianSpec::with_packages(&["python3", "curl", "kmod"]);

    // Two threads want the same image at once: one builds, the other waits and reuses it.
    let t = Instant::now();
    let (a, b) = std::thread::scope(|s| {
        let one = s.spawn(|| prepare_in(&spec, &kernel, &dirs, false, &mut print_steps()));
        let two = s.spawn(|| prepare_in(&spec, &kernel, &dirs, false, &mut print_steps()));
        (one.join().unwrap().unwrap(), two.join().unwrap().unwrap())
    });
    let cold = t.elapsed();
    assert_eq!(a.rootfs, b.rootfs);
    assert_eq!(u8::from(a.built) + u8::from(b.built), 1, "exactly one of two concurrent calls builds");
    let image = if a.built { a } else { b };
    let size = std::fs::metadata(&image.rootfs).unwrap().len();
    eprintln!(
        "cold build {cold:.2?}: {} packages, {:.1} MB, key {}",
        image.packages.len(),
        size as f64 / 1e6,
        image.key
    );
    assert!(image.packages.iter().any(|(n, _)| n == "python3"));
    assert!(!image.packages.iter().any(|(n, _)| n == "apt" || n == "usrmerge" || n == "perl"));

    let list = listing(&image.rootfs);
    eprintln!("{} entries", list.len());
    let rel = &kernel.kernel_release;
    for path in ["usr/bin/python3", "usr/bin/curl", "etc/passwd", &format!("usr/lib/modules/{rel}/modules.dep")] {
        entry(&list, path);
    }
    assert!(
        entry(&list, "bin").starts_with("l") && entry(&list, "bin").ends_with("bin -> usr/bin"),
        "{}",
        entry(&list, "bin")
    );
    assert!(entry(&list, "lib64").ends_with("-> usr/lib64"));
    assert!(entry(&list, "usr/bin/su").starts_with("-rwsr-xr-x 0/0"), "{}", entry(&list, "usr/bin/su"));
    assert!(entry(&list, "tmp").starts_with("drwxrwxrwt 0/0"), "{}", entry(&list, "tmp"));
    assert!(entry(&list, "root").starts_with("drwx------ 0/0"), "{}", entry(&list, "root"));
    assert!(entry(&list, "etc/shadow").starts_with("-rw-r----- 0/42"), "{}", entry(&list, "etc/shadow"));
    assert!(entry(&list, "usr/bin/awk").ends_with("-> /usr/bin/mawk"), "{}", entry(&list, "usr/bin/awk"));
    assert!(entry(&list, "usr/bin/which").ends_with("-> /usr/bin/which.debianutils"));
    assert!(!list.iter().any(|l| l.contains("usr/share/doc/bash/")), "docs are pruned");
    entry(&list, "usr/share/doc");
    assert!(
        !list.iter().any(|l| l.ends_with(" bin/bash") || l.contains(" lib/x86_64-linux-gnu")),
        "nothing outside /usr"
    );
    let modules =
        list.iter().filter(|l| l.contains(&format!("usr/lib/modules/{rel}/kernel/")) && l.ends_with(".ko")).count();
    assert!(modules > 1000, "the whole module tree is in the image ({modules} modules)");

    // Same spec again: no apt, no network, a cache hit.
    let t = Instant::now();
    let mut steps = Vec::new();
    let again = prepare_in(&spec, &kernel, &dirs, false, &mut |s| steps.push(s)).unwrap();
    let hit = t.elapsed();
    eprintln!("cache hit {hit:.2?}");
    assert!(!again.built);
    assert_eq!(again.rootfs, image.rootfs);
    assert_eq!(steps, [Step::Cached]);
    assert!(hit.as_millis() < 500, "a cache hit took {hit:?}");

    run_in_chroot(&image.rootfs, rel);

    // A build killed half way left a temp dir (and no image): the next build removes it.
    let entry_dir = image.rootfs.parent().unwrap();
    let mut perms = std::fs::metadata(&image.rootfs).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&image.rootfs, perms).unwrap();
    std::fs::remove_dir_all(entry_dir).unwrap();
    let leftover = dirs.images.join(format!(".tmp-{}-4242-0", image.key));
    std::fs::create_dir(&leftover).unwrap();
    std::fs::write(leftover.join(ROOTFS), b"half an image").unwrap();
    let t = Instant::now();
    let rebuilt = prepare_in(&spec, &kernel, &dirs, false, &mut print_steps()).unwrap();
    eprintln!("warm rebuild (debs cached) {:.2?}", t.elapsed());
    assert!(rebuilt.built);
    assert_eq!(rebuilt.key, image.key);
    assert!(!leftover.exists(), "the interrupted build's leftovers are removed");
    let names: Vec<String> = std::fs::read_dir(&dirs.images)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with(".tmp-")), "{names:?}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(entry_dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["packages"]["python3"].as_str(),
        image.packages.iter().find(|(n, _)| n == "python3").map(|(_, v)| v.as_str())
    );
}

/// Unpacks the image and runs programs from it in a chroot (inside `unshare -r` when not
/// root). Prints what it ran; fails loudly if it cannot.
fn run_in_chroot(image: &Path, release: &str) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let t = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "sqfs2tar --no-skip '{}' | unshare -r tar --no-same-owner -x -C '{}'",
            image.display(),
            root.display()
        ))
        .status()
        .unwrap();
    assert!(status.success(), "unpacking the image failed");
    eprintln!("unpacked the image for a chroot in {:.2?}", t.elapsed());
    for script in [
        "python3 -c 'print(1+1)'",
        "curl --version | head -1",
        "awk 'BEGIN { print \"awk ok\" }'",
        "id -un; ls -ld /tmp /usr/bin/su",
        &format!("modprobe -S {release} --show-depends virtio_net"),
    ] {
        let t = Instant::now();
        let out = Command::new("unshare")
            .args(["-r", "chroot"])
            .arg(&root)
            .args(["/bin/sh", "-c", script])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!("chroot `{script}` ({:.2?}): {}", t.elapsed(), stdout.trim());
        assert!(out.status.success(), "`{script}` failed in the chroot: {}", String::from_utf8_lossy(&out.stderr));
        if script.starts_with("python3") {
            assert_eq!(stdout.trim(), "2");
        }
    }
}

/// Each phase timed on its own, cold (fresh apt root and .deb dir), then `tar2sqfs` per
/// compressor on the same tar, then a whole cold `prepare` (run by hand: `cargo test -p
/// provium --lib measure_phases -- --ignored --nocapture`).
#[test]
#[ignore = "a measurement, not a check"]
fn measure_phases() {
    let kernel = kernel();
    let tmp = tempfile::tempdir().unwrap();
    let dirs = CacheDirs::under(tmp.path());
    let packages = ["python3".to_owned(), "curl".to_owned()];
    let secs = |t: Instant| t.elapsed().as_secs_f64();

    let root = apt::AptRoot::open(&dirs.apt, DEFAULT_MIRROR, DEFAULT_SUITE).unwrap();
    let t = Instant::now();
    root.update_if_needed(false, &mut |_| {}).unwrap();
    eprintln!("apt-get update (cold): {:.2} s", secs(t));
    let t = Instant::now();
    let (pkgs, cached) = root.resolve(&packages).unwrap();
    assert!(!cached);
    eprintln!("resolve: {:.2} s ({} packages)", secs(t), pkgs.len());
    let t = Instant::now();
    let (_, again) = root.resolve(&packages).unwrap();
    assert!(again);
    eprintln!("resolve (stored): {:.4} s", secs(t));
    let t = Instant::now();
    let (debs, (count, bytes)) = apt::download(&root, &pkgs, &dirs.debs).unwrap();
    eprintln!("download (cold): {:.2} s, {count} debs, {:.1} MB", secs(t), bytes as f64 / 1e6);

    let tar_path = tmp.path().join("root.tar");
    let t = Instant::now();
    let file = std::io::BufWriter::new(std::fs::File::create(&tar_path).unwrap());
    let mut stream = unpack::Stream::new(file);
    let captured = stream.add_debs(&debs, &mut |_| {}).unwrap();
    let t_debs = secs(t);
    fixups::apply(&mut stream, &captured, &mut |_| {}).unwrap();
    let t_fix = secs(t);
    stream.add_modules(&kernel.modules_dir(), &kernel.kernel_release).unwrap();
    let (stats, _) = stream.finish().unwrap();
    eprintln!(
        "unpack+tar: {:.2} s (debs {t_debs:.2}, fixups {:.2}, modules {:.2}); {} entries, {:.1} MB tar",
        secs(t),
        t_fix - t_debs,
        secs(t) - t_fix,
        stats.entries,
        stats.tar_bytes as f64 / 1e6
    );
    let choices = [
        ("lz4", ""),
        ("lz4", "hc"),
        ("zstd", "level=1"),
        ("zstd", "level=3"),
        ("zstd", "level=6"),
        ("zstd", "level=15"),
        ("gzip", "level=1"),
        ("gzip", "level=9"),
        ("xz", "level=6"),
    ];
    for (c, extra) in choices {
        let out = tmp.path().join(format!("{c}.sqfs"));
        let t = Instant::now();
        let extra = if extra.is_empty() { String::new() } else { format!("-X {extra}") };
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar2sqfs -q -f -s -c {c} {extra} -j {} '{}' < '{}'",
                std::thread::available_parallelism().unwrap(),
                out.display(),
                tar_path.display()
            ))
            .status()
            .unwrap();
        assert!(status.success());
        let size = std::fs::metadata(&out).unwrap().len();
        eprintln!("tar2sqfs -c {c:4} {extra:14}: {:.2} s, {:.1} MB", secs(t), size as f64 / 1e6);
    }

    if std::env::var_os("PROVIUM_DEBIAN_MEASURE_PREPARE").is_none() {
        return;
    }
    for c in [Compression::Lz4, Compression::Zstd] {
        let fresh = tempfile::tempdir().unwrap();
        let spec = DebianSpec { compression: c, ..DebianSpec::with_packages(&packages) };
        let t = Instant::now();
        let img = prepare(&spec, &kernel, fresh.path(), false, &mut |_| {}).unwrap();
        eprintln!("prepare, all cold ({}): {:.2} s", c.name(), secs(t));
        let t = Instant::now();
        let hit = prepare(&spec, &kernel, fresh.path(), false, &mut |_| {}).unwrap();
        assert!(img.built && !hit.built);
        eprintln!("prepare, cache hit: {:.4} s", secs(t));
    }
}
