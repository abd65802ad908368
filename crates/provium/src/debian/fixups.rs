//! What the skipped maintainer scripts would have left in the tree, written as extra entries
//! of the image stream: `/etc/passwd` and `/etc/group` (base-passwd's masters), a locked
//! `/etc/shadow`, the `update-alternatives --install` symlinks of every postinst (`awk`,
//! `which`, `pager`…), `/etc/hostname`, `/etc/hosts`, an empty `/etc/resolv.conf`, and the
//! mount points and dirs base-files' postinst would create.
//!
//! Owns only these rules; anything a package shipped itself is never replaced.

use std::collections::BTreeMap;
use std::io::Write;

use super::unpack::{merged, normalize, Captured, Stream};
use super::{DebianError, Step};

/// What went into the key from this file; change it with the rules.
pub(super) const SETTINGS: &str = "fixups-1 passwd(x) group shadow alternatives+slaves hostname=provium hosts resolv \
                                   mtab proc sys dev run tmp usr/local/bin root";

const HOSTNAME: &str = "provium";

/// Adds the fixups to `s`.
pub(super) fn apply<W: Write>(
    s: &mut Stream<W>,
    captured: &Captured,
    progress: &mut dyn FnMut(Step),
) -> Result<(), DebianError> {
    write(s, captured, progress).map_err(DebianError::stream)
}

fn write<W: Write>(s: &mut Stream<W>, captured: &Captured, progress: &mut dyn FnMut(Step)) -> std::io::Result<()> {
    const ROOT: (u64, u64) = (0, 0);
    let passwd = captured.passwd_master.clone().unwrap_or_else(|| {
        progress(Step::Warning("no base-passwd in the image; /etc/passwd holds only root".to_owned()));
        "root:x:0:0:root:/root:/bin/sh\n".to_owned()
    });
    let group = captured.group_master.clone().unwrap_or_else(|| "root:*:0:\n".to_owned());
    for d in ["etc", "usr", "usr/local", "usr/local/bin"] {
        s.dir(d, 0o755)?;
    }
    s.file("etc/passwd", 0o644, ROOT, shadowed(&passwd).as_bytes())?;
    s.file("etc/group", 0o644, ROOT, group.as_bytes())?;
    let shadow_gid = group_id(&group, "shadow").unwrap_or(0);
    s.file("etc/shadow", 0o640, (0, shadow_gid), shadow(&passwd).as_bytes())?;

    let mut made = 0;
    for alt in chosen(&captured.postinsts) {
        for (link, path) in std::iter::once((&alt.link, &alt.path)).chain(alt.slaves.iter().map(|(l, p)| (l, p))) {
            let (Some(link), Some(path)) = (normalize(link).map(|l| merged(&l)), normalize(path).map(|p| merged(&p)))
            else {
                continue;
            };
            if s.contains(&path) && s.symlink(&link, &format!("/{path}"))? {
                made += 1;
            }
        }
    }
    tracing::debug!(made, "alternatives symlinks");

    s.file("etc/hostname", 0o644, ROOT, format!("{HOSTNAME}\n").as_bytes())?;
    let hosts = format!("127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\t\tlocalhost ip6-localhost ip6-loopback\n");
    s.file("etc/hosts", 0o644, ROOT, hosts.as_bytes())?;
    s.file("etc/resolv.conf", 0o644, ROOT, b"")?;
    s.symlink("etc/mtab", "../proc/self/mounts")?;
    for (d, mode) in [("proc", 0o555), ("sys", 0o555), ("dev", 0o755), ("run", 0o755), ("tmp", 0o1777), ("root", 0o700)]
    {
        s.dir(d, mode)?;
    }
    Ok(())
}

/// The gid of group `name` in a group file.
fn group_id(group: &str, name: &str) -> Option<u64> {
    group.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// `passwd` with each password field `x` (see `/etc/shadow`), as `shadowconfig on` leaves it.
fn shadowed(passwd: &str) -> String {
    passwd
        .lines()
        .map(|l| match l.split_once(':') {
            Some((name, rest)) => format!("{name}:x:{}\n", rest.split_once(':').map_or("", |(_, r)| r)),
            None => format!("{l}\n"),
        })
        .collect()
}

/// A shadow file with every account of `passwd` locked.
fn shadow(passwd: &str) -> String {
    passwd
        .lines()
        .filter_map(|l| l.split(':').next().filter(|n| !n.is_empty()))
        .map(|name| format!("{name}:*::0:99999:7:::\n"))
        .collect()
}

/// One `update-alternatives --install` of a postinst.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Alternative {
    pub link: String,
    pub name: String,
    pub path: String,
    pub priority: i64,
    /// (link, path) of each `--slave`.
    pub slaves: Vec<(String, String)>,
}

/// For each alternative name, the install with the highest priority (the first on a tie).
fn chosen(postinsts: &[(String, String)]) -> Vec<Alternative> {
    let mut best: BTreeMap<String, Alternative> = BTreeMap::new();
    for (_, script) in postinsts {
        for alt in parse_alternatives(script) {
            match best.get(&alt.name) {
                Some(b) if b.priority >= alt.priority => {}
                _ => {
                    best.insert(alt.name.clone(), alt);
                }
            }
        }
    }
    best.into_values().collect()
}

/// The `update-alternatives --install <link> <name> <path> <prio> [--slave <link> <name>
/// <path>]…` calls of a shell script, with `\` continuations joined. Calls whose arguments use
/// shell expansions are skipped (their values are unknown here).
pub(super) fn parse_alternatives(script: &str) -> Vec<Alternative> {
    let joined = script.replace("\\\n", " ");
    let mut out = Vec::new();
    for line in joined.lines() {
        let line = line.split(" #").next().unwrap_or(line);
        let tokens: Vec<String> =
            line.split_whitespace().map(|t| t.trim_matches(|c| c == '"' || c == '\'').to_owned()).collect();
        let mut i = 0;
        while i < tokens.len() {
            if tokens[i] != "update-alternatives" {
                i += 1;
                continue;
            }
            let args: Vec<&str> = tokens[i + 1..]
                .iter()
                .map(String::as_str)
                .take_while(|t| !matches!(*t, "||" | "&&" | ";" | "|" | ">" | "2>" | ">/dev/null" | "2>/dev/null"))
                .collect();
            i += 1 + args.len();
            if args.iter().any(|a| a.contains('$') || a.contains('`')) {
                continue;
            }
            let Some(at) = args.iter().position(|a| *a == "--install") else { continue };
            let (Some(link), Some(name), Some(path), Some(priority)) =
                (args.get(at + 1), args.get(at + 2), args.get(at + 3), args.get(at + 4).and_then(|p| p.parse().ok()))
            else {
                continue;
            };
            let mut slaves = Vec::new();
            let mut j = at + 5;
            while j < args.len() {
                if args[j] == "--slave" {
                    if let (Some(l), Some(p)) = (args.get(j + 1), args.get(j + 3)) {
                        slaves.push((l.to_string(), p.to_string()));
                    }
                    j += 4;
                } else {
                    j += 1;
                }
            }
            out.push(Alternative {
                link: link.to_string(),
                name: name.to_string(),
                path: path.to_string(),
                priority,
                slaves,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // From the bookworm postinsts of mawk, debianutils, util-linux and bash (abridged).
    const MAWK: &str = "#!/bin/sh\nset -e\n\nif [ \"$1\" = configure ]; then\n        \
        update-alternatives --install /usr/bin/awk awk /usr/bin/mawk 5 \\\n            \
        --slave /usr/share/man/man1/awk.1.gz awk.1.gz /usr/share/man/man1/mawk.1.gz \\\n            \
        --slave /usr/bin/nawk nawk /usr/bin/mawk \\\n            \
        --slave /usr/share/man/man1/nawk.1.gz nawk.1.gz /usr/share/man/man1/mawk.1.gz\nfi\n";
    const WHICH: &str = "\tupdate-alternatives --install /usr/bin/which which /usr/bin/which.debianutils 0 \\\n\t\t\
        --slave /usr/share/man/man1/which.1.gz which.1.gz /usr/share/man/man1/which.debianutils.1.gz\n";
    const PAGER: &str =
        "if [ \"$1\" = configure ]; then\n\tupdate-alternatives --install /usr/bin/pager pager /bin/more 50 \\\n\t\t\
        --slave /usr/share/man/man1/pager.1.gz pager.1.gz \\\n\t\t/usr/share/man/man1/more.1.gz\nfi\n";
    const BASH: &str =
        "update-alternatives --install \\\n    /usr/share/man/man7/builtins.7.gz \\\n    builtins.7.gz \\\n    \
        /usr/share/man/man7/bash-builtins.7.gz \\\n    10 \\\n  || true\n";

    #[test]
    fn alternatives_lines() {
        let awk = parse_alternatives(MAWK);
        assert_eq!(awk.len(), 1);
        assert_eq!(
            (awk[0].link.as_str(), awk[0].name.as_str(), awk[0].path.as_str()),
            ("/usr/bin/awk", "awk", "/usr/bin/mawk")
        );
        assert_eq!(awk[0].priority, 5);
        assert_eq!(awk[0].slaves[1], ("/usr/bin/nawk".to_owned(), "/usr/bin/mawk".to_owned()));
        assert_eq!(parse_alternatives(WHICH)[0].path, "/usr/bin/which.debianutils");
        let pager = parse_alternatives(PAGER);
        assert_eq!((pager[0].path.as_str(), pager[0].priority), ("/bin/more", 50));
        assert_eq!(
            pager[0].slaves,
            [("/usr/share/man/man1/pager.1.gz".to_owned(), "/usr/share/man/man1/more.1.gz".to_owned())]
        );
        assert_eq!(parse_alternatives(BASH)[0].priority, 10);
        assert!(parse_alternatives("update-alternatives --install \"$DPKG_ROOT/x\" x /y 1\n").is_empty());
        assert!(parse_alternatives("update-alternatives --remove awk /usr/bin/mawk\n").is_empty());
    }

    #[test]
    fn highest_priority_wins() {
        let low = ("a.deb".to_owned(), "update-alternatives --install /usr/bin/awk awk /usr/bin/mawk 5\n".to_owned());
        let high = ("b.deb".to_owned(), "update-alternatives --install /usr/bin/awk awk /usr/bin/gawk 10\n".to_owned());
        let got = chosen(&[low.clone(), high.clone()]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].path, "/usr/bin/gawk");
        assert_eq!(chosen(&[high, low])[0].path, "/usr/bin/gawk");
    }

    #[test]
    fn shadow_and_groups() {
        let passwd = "root:*:0:0:root:/root:/bin/bash\ndaemon:*:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n";
        assert_eq!(shadow(passwd), "root:*::0:99999:7:::\ndaemon:*::0:99999:7:::\n");
        assert_eq!(
            shadowed(passwd),
            "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
        );
        assert_eq!(group_id("root:*:0:\nshadow:*:42:\n", "shadow"), Some(42));
        assert_eq!(group_id("root:*:0:\n", "shadow"), None);
    }
}
