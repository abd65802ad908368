//! Console badness checks: kernel reports on a VM's console that mean the
//! guest kernel is unwell whatever the test asserted — an oops, `BUG:`, a
//! `WARNING: CPU:` splat, a general protection fault, a panic, a hung task,
//! a lockdep report. The runner fails a test whose VMs printed one during
//! it (`crate::runner::file`), quoting the lines.
//!
//! This module owns the patterns and the scan, and [`ConsoleWatch`], the
//! window of one VM's console that belongs to the running test: marked at
//! the test's start, and carried across the QEMU instances the test stops
//! (a shutdown, a restore) so their lines are not lost.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// One kind of report: its name and the text that starts it.
struct Kind {
    name: &'static str,
    starts: &'static [&'static str],
    /// All of these must be on the same line too.
    and: &'static [&'static str],
}

const KINDS: &[Kind] = &[
    Kind { name: "kernel panic", starts: &["Kernel panic"], and: &[] },
    Kind { name: "oops", starts: &["Oops: ", "Oops - "], and: &[] },
    Kind { name: "BUG", starts: &["BUG: "], and: &[] },
    Kind { name: "WARNING", starts: &["WARNING: CPU: "], and: &[] },
    Kind { name: "general protection fault", starts: &["general protection fault"], and: &[] },
    Kind { name: "hung task", starts: &["INFO: task "], and: &["blocked for more than"] },
    Kind {
        name: "lockdep report",
        starts: &[
            "possible circular locking dependency detected",
            "possible recursive locking detected",
            "inconsistent lock state",
            "suspicious RCU usage",
        ],
        and: &[],
    },
];

/// How many lines after the first one a finding quotes.
const FOLLOWING_LINES: usize = 8;

/// A report found on a console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `kernel panic`, `oops`, `BUG`, `WARNING`, `hung task`, …
    pub kind: &'static str,
    /// The line that starts it and a few after it.
    pub lines: String,
}

fn kind_of(line: &str) -> Option<&'static str> {
    KINDS
        .iter()
        .find(|k| k.starts.iter().any(|s| line.contains(s)) && k.and.iter().all(|a| line.contains(a)))
        .map(|k| k.name)
}

/// Every report in `text`, in order. Lines that a report quotes are not
/// looked at again (an oops's `Kernel panic` line is part of the oops).
pub fn scan(text: &str) -> Vec<Finding> {
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(kind) = kind_of(lines[i]) else {
            i += 1;
            continue;
        };
        let end = (i + 1 + FOLLOWING_LINES).min(lines.len());
        // Stop the quote where the next report starts.
        let end = (i + 1..end).find(|&j| kind_of(lines[j]).is_some()).unwrap_or(end);
        out.push(Finding { kind, lines: lines[i..end].join("\n") });
        i = end;
    }
    out
}

/// What a test asked of the checks (`meta.console_checks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checks {
    /// Every report fails the test (the default).
    On,
    /// `console_checks = false`.
    Off,
    /// `console_checks = {"pattern", …}`: a report whose lines contain one
    /// of these (plain text) is allowed.
    Allow(Vec<String>),
}

impl Checks {
    /// The findings that fail the test.
    pub fn failing(&self, found: Vec<(String, Finding)>) -> Vec<(String, Finding)> {
        match self {
            Checks::On => found,
            Checks::Off => Vec::new(),
            Checks::Allow(allowed) => {
                found.into_iter().filter(|(_, f)| !allowed.iter().any(|a| f.lines.contains(a.as_str()))).collect()
            }
        }
    }
}

/// How many reports of one kind on one VM a message quotes (a hung task
/// is reported again every check interval).
const QUOTED_PER_KIND: usize = 3;

/// The failure text for `failing` findings (vm name, finding).
pub fn message(failing: &[(String, Finding)]) -> String {
    let mut out = String::from(
        "the guest kernel reported a problem on the console during this test \
         (set meta.console_checks = false, or a list of allowed patterns, to accept it):",
    );
    let mut quoted: Vec<(&str, &str, usize)> = Vec::new();
    for (vm, f) in failing {
        let seen = match quoted.iter_mut().find(|(v, k, _)| *v == vm.as_str() && *k == f.kind) {
            Some(entry) => {
                entry.2 += 1;
                entry.2
            }
            None => {
                quoted.push((vm.as_str(), f.kind, 1));
                1
            }
        };
        if seen <= QUOTED_PER_KIND {
            out.push_str(&format!("\n---- vm {vm}: {} ----\n{}", f.kind, f.lines));
        }
    }
    for (vm, kind, n) in quoted.into_iter().filter(|q| q.2 > QUOTED_PER_KIND) {
        out.push_str(&format!("\n(vm {vm}: {} more {kind} report(s) not quoted)", n - QUOTED_PER_KIND));
    }
    out
}

/// Most console text a window keeps of instances that stopped.
const CARRY_MAX: usize = 1 << 20;

/// The part of one VM's console log that the running test produced.
#[derive(Debug, Default)]
pub struct ConsoleWatch {
    /// The log being watched and the length it had at the mark.
    mark: Option<(PathBuf, u64)>,
    /// Text of instances that stopped since the mark.
    carried: String,
}

fn read_from(log: &Path, offset: u64) -> String {
    let mut out = Vec::new();
    if let Ok(mut f) = std::fs::File::open(log) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = f.read_to_end(&mut out);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl ConsoleWatch {
    /// A test starts: only what `log` (the running instance's, if any)
    /// gets from now on counts.
    pub fn mark(&mut self, log: Option<&Path>) {
        self.carried.clear();
        self.mark = log.map(|l| (l.to_path_buf(), std::fs::metadata(l).map(|m| m.len()).unwrap_or(0)));
    }

    fn since_mark(&self, log: &Path) -> String {
        match &self.mark {
            Some((marked, offset)) if marked == log => read_from(log, *offset),
            _ => read_from(log, 0),
        }
    }

    /// The instance writing `log` is stopping: keep what it wrote since
    /// the mark.
    pub fn carry(&mut self, log: &Path) {
        let text = self.since_mark(log);
        self.carried.push_str(&text);
        if self.carried.len() > CARRY_MAX {
            let cut = self.carried.len() - CARRY_MAX;
            let cut = (cut..self.carried.len()).find(|&i| self.carried.is_char_boundary(i)).unwrap_or(0);
            self.carried.drain(..cut);
        }
        self.mark = None;
    }

    /// Everything the test's window holds: stopped instances' text, then
    /// the running one's (`log`) since the mark.
    pub fn text(&self, log: Option<&Path>) -> String {
        let mut out = self.carried.clone();
        if let Some(log) = log {
            out.push_str(&self.since_mark(log));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OOPS: &str = "[   10.1] BUG: kernel NULL pointer dereference, address: 0000000000000000\n\
                        [   10.1] #PF: supervisor read access in kernel mode\n\
                        [   10.1] Oops: 0000 [#1] PREEMPT SMP NOPTI\n\
                        [   10.1] CPU: 0 PID: 1 Comm: sh Not tainted 6.1.0\n";

    #[test]
    fn each_kind_is_found_with_the_lines_after_it() {
        let samples = [
            ("[ 5.0] Kernel panic - not syncing: sysrq triggered crash", "kernel panic"),
            ("[ 5.0] WARNING: CPU: 1 PID: 42 at fs/inode.c:100 f+0x1/0x2", "WARNING"),
            ("[ 5.0] general protection fault, probably for non-canonical address", "general protection fault"),
            ("[ 5.0] INFO: task dd:77 blocked for more than 2 seconds.", "hung task"),
            ("[ 5.0] WARNING: possible circular locking dependency detected", "lockdep report"),
            ("[ 5.0] Oops - BUG: 0000 [#1]", "oops"),
        ];
        for (line, kind) in samples {
            let found = scan(&format!("ok\n{line}\nnext line\n"));
            assert_eq!(found.len(), 1, "{line}");
            assert_eq!(found[0].kind, kind, "{line}");
            assert_eq!(found[0].lines, format!("{line}\nnext line"));
        }
        let found = scan(OOPS);
        assert_eq!(found.iter().map(|f| f.kind).collect::<Vec<_>>(), vec!["BUG", "oops"]);
        assert!(found[0].lines.contains("#PF: supervisor"));
        assert!(found[1].lines.ends_with("Not tainted 6.1.0"));
    }

    #[test]
    fn ordinary_boot_lines_are_not_reports() {
        let boot = "[ 0.0] Linux version 6.1.0\n[ 0.1] WARNING: this is not a splat\n\
                    [ 0.2] INFO: task list printed\n[ 0.3] BUGGY driver name\nhello BUG\n";
        assert_eq!(scan(boot), vec![]);
    }

    #[test]
    fn opting_out_or_allowing_a_pattern() {
        let found: Vec<(String, Finding)> = scan(OOPS).into_iter().map(|f| ("web".to_string(), f)).collect();
        assert_eq!(Checks::On.failing(found.clone()).len(), 2);
        assert!(Checks::Off.failing(found.clone()).is_empty());
        let allow = Checks::Allow(vec!["NULL pointer".into()]);
        let left = allow.failing(found.clone());
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].1.kind, "oops");
        let m = message(&left);
        assert!(m.contains("---- vm web: oops ----\n[   10.1] Oops: 0000"), "{m}");
        assert!(m.contains("meta.console_checks = false"), "{m}");
        let hung = Finding { kind: "hung task", lines: "INFO: task x blocked for more than 1 seconds.".into() };
        let many: Vec<(String, Finding)> = (0..5).map(|_| ("db".to_string(), hung.clone())).collect();
        let m = message(&many);
        assert_eq!(m.matches("---- vm db: hung task ----").count(), 3, "{m}");
        assert!(m.ends_with("(vm db: 2 more hung task report(s) not quoted)"), "{m}");
    }

    #[test]
    fn the_window_starts_at_the_mark_and_keeps_stopped_instances() {
        let d = tempfile::tempdir().unwrap();
        let (first, second) = (d.path().join("1.log"), d.path().join("2.log"));
        std::fs::write(&first, "before the test\n").unwrap();
        let mut w = ConsoleWatch::default();
        w.mark(Some(&first));
        std::fs::write(&first, "before the test\nduring\n").unwrap();
        assert_eq!(w.text(Some(&first)), "during\n");
        w.carry(&first);
        std::fs::write(&second, "restored\n").unwrap();
        assert_eq!(w.text(Some(&second)), "during\nrestored\n", "a new instance's log counts whole");
        w.mark(Some(&second));
        assert_eq!(w.text(Some(&second)), "", "a new test starts clean");
    }
}
