//! The live progress bar on an interactive terminal (an `indicatif` bar on
//! stderr): how many files have finished, and what is going on now —
//! `booting`, `booting · N vms`, then `N vms · M tests` (VMs: `VmSpawned`
//! less `VmStopped`; tests: finished tests).
//!
//! [`wanted`] decides whether there is a bar at all; [`Tally`] turns events
//! into its text; [`Progress`] draws it. Whoever writes anything else to the
//! terminal while the bar is up does it inside [`Progress::suspend`], which
//! clears the bar first and draws it again after, so lines never
//! interleave; [`Progress::finish`] clears it for good.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};

use super::Event;

/// What decides whether the bar is shown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Conditions {
    pub stderr_is_terminal: bool,
    pub json: bool,
    pub events_stdout: bool,
    pub verbose: bool,
    pub quiet: bool,
    pub no_progress: bool,
    /// The `CI` environment variable is set and not empty.
    pub ci: bool,
}

/// Whether the bar is wanted: only on an interactive stderr, and never
/// for machine output (`--json`, `--events-stdout`), with `-v` (whose
/// diagnostics share stderr) or `-q`, with `--no-progress`, or in CI.
pub fn wanted(c: &Conditions) -> bool {
    c.stderr_is_terminal && !(c.json || c.events_stdout || c.verbose || c.quiet || c.no_progress || c.ci)
}

/// Whether a `CI` variable's value means "running in CI".
pub fn is_ci(value: Option<&std::ffi::OsStr>) -> bool {
    value.is_some_and(|v| !v.is_empty())
}

/// What the bar says, counted from events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub files: usize,
    pub files_done: usize,
    pub vms: usize,
    pub tests: usize,
}

impl Tally {
    /// Counts `e`; whether anything the bar shows changed.
    pub fn record(&mut self, e: &Event) -> bool {
        let before = *self;
        match e {
            Event::RunStarted { files, .. } => self.files = *files,
            Event::VmSpawned { .. } => self.vms += 1,
            Event::VmStopped { .. } => self.vms = self.vms.saturating_sub(1),
            Event::TestFinished { .. } => self.tests += 1,
            Event::FileFinished { .. } => self.files_done += 1,
            _ => {}
        }
        *self != before
    }

    /// The bar's message.
    pub fn text(&self) -> String {
        match (self.tests, self.vms) {
            (0, 0) => "booting".to_string(),
            (0, vms) => format!("booting · {vms} vms"),
            (tests, vms) => format!("{vms} vms · {tests} tests"),
        }
    }

    /// The prefix of a finished file's result line: `[i/N] `.
    pub fn position(&self) -> String {
        format!("[{}/{}] ", self.files_done, self.files)
    }
}

/// How often the spinner and the elapsed time move.
const TICK: Duration = Duration::from_millis(200);

/// The bar itself. Nothing is drawn before the run starts.
pub struct Progress {
    bar: ProgressBar,
    tally: Tally,
    /// Redraws on its own this often (the spinner, the elapsed time).
    tick: Option<Duration>,
}

impl Progress {
    /// A bar on stderr.
    pub fn stderr() -> Progress {
        Progress { tick: Some(TICK), ..Progress::new(ProgressDrawTarget::stderr()) }
    }

    /// A bar drawn on `target` (tests draw on a recorder), only when
    /// events change it.
    pub fn new(target: ProgressDrawTarget) -> Progress {
        let style = ProgressStyle::with_template("{spinner} {pos}/{len} files · {msg} · {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let tally = Tally::default();
        // A bar dropped before the run ends (provium stopping early) is
        // cleared too.
        let bar = ProgressBar::with_draw_target(Some(0), target)
            .with_style(style)
            .with_message(tally.text())
            .with_finish(ProgressFinish::AndClear);
        Progress { bar, tally, tick: None }
    }

    /// Counts `e` and redraws what changed.
    pub fn event(&mut self, e: &Event) {
        if self.tally.record(e) {
            self.bar.set_length(self.tally.files as u64);
            self.bar.set_position(self.tally.files_done as u64);
            self.bar.set_message(self.tally.text());
        }
        if let (Event::RunStarted { .. }, Some(every)) = (e, self.tick) {
            self.bar.enable_steady_tick(every);
        }
    }

    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// Runs `f` (which writes to the terminal) with the bar cleared.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.bar.suspend(f)
    }

    /// Clears the bar for good.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A terminal that records what is drawn on it: text as is, and `⌫`
    /// for each line cleared.
    #[derive(Debug, Clone, Default)]
    pub struct Screen(pub Arc<Mutex<String>>);

    impl Screen {
        pub fn text(&self) -> String {
            self.0.lock().unwrap().clone()
        }
    }

    impl std::io::Write for Screen {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push_str(&String::from_utf8_lossy(buf));
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl indicatif::TermLike for Screen {
        fn width(&self) -> u16 {
            100
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push_str(&format!("{s}\n"));
            Ok(())
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push_str(s);
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            self.0.lock().unwrap().push('⌫');
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn wanted_only_on_an_interactive_terminal_without_machine_output_or_ci() {
        let tty = Conditions { stderr_is_terminal: true, ..Default::default() };
        assert!(wanted(&tty));
        assert!(!wanted(&Conditions::default()), "stderr is not a terminal");
        type Turn = fn(&mut Conditions);
        let off: [(&str, Turn); 7] = [
            ("not a terminal", |c| c.stderr_is_terminal = false),
            ("--json", |c| c.json = true),
            ("--events-stdout", |c| c.events_stdout = true),
            ("-v", |c| c.verbose = true),
            ("-q", |c| c.quiet = true),
            ("--no-progress", |c| c.no_progress = true),
            ("CI", |c| c.ci = true),
        ];
        for (why, set) in off {
            let mut c = tty;
            set(&mut c);
            assert!(!wanted(&c), "no bar with {why}");
        }
        assert!(is_ci(Some("true".as_ref())) && is_ci(Some("1".as_ref())));
        assert!(!is_ci(Some("".as_ref())) && !is_ci(None), "an empty or unset CI is no CI");
    }

    fn vm(e: &str) -> Event {
        match e {
            "spawned" => {
                Event::VmSpawned { file: None, vm: "v".into(), profile: "default".into(), memory_bytes: 1 << 28 }
            }
            _ => Event::VmStopped { file: None, vm: "v".into(), ran: Duration::ZERO },
        }
    }

    fn test_done() -> Event {
        Event::TestFinished {
            file: "a.test.lua".into(),
            test: crate::report::TestReport {
                name: "t".into(),
                outcome: crate::report::Outcome::Passed,
                log: vec![],
                duration: Duration::ZERO,
                console: vec![],
                meta: Default::default(),
            },
        }
    }

    #[test]
    fn the_text_goes_from_booting_to_vms_and_tests() {
        let mut t = Tally::default();
        let mut texts = vec![t.text()];
        for e in [vm("spawned"), vm("spawned"), test_done(), vm("stopped"), test_done(), vm("stopped")] {
            assert!(t.record(&e));
            texts.push(t.text());
        }
        assert!(!t.record(&vm("stopped")), "never below zero VMs");
        assert_eq!(
            texts,
            [
                "booting",
                "booting · 1 vms",
                "booting · 2 vms",
                "2 vms · 1 tests",
                "1 vms · 1 tests",
                "1 vms · 2 tests",
                "0 vms · 2 tests",
            ]
        );
        assert!(!t.record(&Event::Warning { file: None, message: "x".into() }), "nothing shown changed");
        t.record(&Event::RunStarted { files: 3, jobs: 1, accel: "tcg".into(), accel_reason: "".into(), seed: 1 });
        t.record(&Event::FileFinished { report: crate::report::FileReport::new("a.test.lua") });
        assert_eq!(t.position(), "[1/3] ");
    }

    #[test]
    fn the_bar_shows_its_counts_and_is_cleared_around_other_output_and_at_the_end() {
        let screen = Screen::default();
        let mut p = Progress::new(ProgressDrawTarget::term_like(Box::new(screen.clone())));
        p.event(&Event::RunStarted { files: 2, jobs: 1, accel: "tcg".into(), accel_reason: "".into(), seed: 1 });
        p.event(&vm("spawned"));
        p.suspend(|| screen.0.lock().unwrap().push_str("RESULT\n"));
        p.finish();
        let text = screen.text();
        let drawn = text.find("0/2 files · booting · 1 vms").unwrap_or_else(|| panic!("{text:?}"));
        let result = text.find("RESULT\n").unwrap();
        assert!(drawn < result && text[drawn..result].contains('⌫'), "cleared before the result: {text:?}");
        assert!(text[result..].contains("booting · 1 vms"), "drawn again after it: {text:?}");
        assert!(text.ends_with('⌫'), "cleared at the end: {text:?}");
    }
}
