//! The live line on an interactive terminal: which test of which file just
//! finished, redrawn in place on stderr and cleared before anything else is
//! written, so it never interleaves with results or notes.

use std::io::Write;

/// Whether the live line is wanted: only on an interactive stderr, never
/// for machine output or when asked to be quiet.
pub fn wanted(stderr_is_terminal: bool, json: bool, quiet: bool) -> bool {
    stderr_is_terminal && !json && !quiet
}

/// The line's state; it writes only what it is given.
#[derive(Debug, Default)]
pub struct ProgressLine {
    shown: bool,
}

impl ProgressLine {
    /// Replaces the line with `text`.
    pub fn show(&mut self, err: &mut dyn Write, text: &str) {
        let _ = write!(err, "\r\x1b[2K{text}");
        let _ = err.flush();
        self.shown = true;
    }

    /// Erases the line if it is shown.
    pub fn clear(&mut self, err: &mut dyn Write) {
        if std::mem::take(&mut self.shown) {
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_on_an_interactive_terminal_and_cleared_once() {
        assert!(wanted(true, false, false));
        assert!(!wanted(false, false, false) && !wanted(true, true, false) && !wanted(true, false, true));
        let mut err = Vec::new();
        let mut p = ProgressLine::default();
        p.clear(&mut err);
        assert!(err.is_empty(), "nothing to clear");
        p.show(&mut err, "  a.test.lua: boots done");
        p.clear(&mut err);
        p.clear(&mut err);
        assert_eq!(String::from_utf8(err).unwrap(), "\r\x1b[2K  a.test.lua: boots done\r\x1b[2K");
    }
}
