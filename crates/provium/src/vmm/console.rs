//! The guest's serial console as error messages quote it: the last bytes of
//! the console log, cleaned of carriage returns and cut at a line start.

/// How much of the console log error messages quote.
pub const CONSOLE_TAIL_BYTES: usize = 4096;

/// Formats the console tail for an error message ("" when empty).
pub fn format_console(tail: &str) -> String {
    if tail.trim().is_empty() {
        "\n--- guest console: (empty) ---".to_string()
    } else {
        format!("\n--- guest console (last lines) ---\n{}\n--- end guest console ---", tail.trim_end())
    }
}

/// The last `max` bytes of a console log, as text with `\n` line ends.
pub fn tail_of(path: &std::path::Path, max: usize) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = bytes.len().saturating_sub(max);
    let text = String::from_utf8_lossy(&bytes[start..]).replace("\r\n", "\n").replace('\r', "");
    // Drop a partial first line when we cut in the middle of one.
    match (start > 0, text.find('\n')) {
        (true, Some(i)) => text[i + 1..].to_string(),
        _ => text,
    }
}
