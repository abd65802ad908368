//! Error text as users read it: an error and its `source()` chain on one
//! line. Every error type keeps its cause as `#[source]` and never formats
//! it into its own message, so walking the chain repeats nothing.

/// The error and its `source()` chain, joined with `: `.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("vm `a`: boot failed")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read `k`")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn the_chain_reads_outermost_first() {
        let e = Outer(Inner(std::io::Error::from_raw_os_error(2)));
        assert_eq!(chain(&e), "vm `a`: boot failed: cannot read `k`: No such file or directory (os error 2)");
    }
}
