//! The open streams and file handles of one VM, with where each was opened.
//!
//! Counts feed `vm:open_stream_count()` / `vm:open_file_count()`, and the
//! descriptions let a refusal (a snapshot with a stream open) name each
//! resource's kind, detail and creation site. A [`ResourceGuard`] removes its
//! entry when the resource closes or is dropped.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The test-author line that opened a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub file: String,
    pub line: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Stream,
    File,
}

#[derive(Debug, Clone)]
struct Entry {
    class: Class,
    kind: &'static str,
    detail: String,
    site: Option<Site>,
}

#[derive(Debug, Default)]
pub struct Registry {
    next: AtomicU64,
    open: Mutex<BTreeMap<u64, Entry>>,
}

/// Keeps one entry registered while it lives.
#[derive(Debug)]
pub struct ResourceGuard {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for ResourceGuard {
    fn drop(&mut self) {
        crate::sync::lock(&self.registry.open).remove(&self.id);
    }
}

impl Registry {
    pub fn register(
        self: &Arc<Self>,
        class: Class,
        kind: &'static str,
        detail: &str,
        site: Option<Site>,
    ) -> ResourceGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        crate::sync::lock(&self.open).insert(id, Entry { class, kind, detail: detail.to_string(), site });
        ResourceGuard { registry: self.clone(), id }
    }

    pub fn count(&self, class: Class) -> usize {
        crate::sync::lock(&self.open).values().filter(|e| e.class == class).count()
    }

    /// One line per open resource: `tail_file("/log") created at a.test.lua:42`.
    pub fn describe(&self) -> Vec<String> {
        self.open
            .lock()
            .unwrap()
            .values()
            .map(|e| {
                let site = e.site.as_ref().map(|s| format!(" created at {}:{}", s.file, s.line)).unwrap_or_default();
                format!("{}({:?}){site}", e.kind, e.detail)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_and_describe() {
        let r = Arc::new(Registry::default());
        let g1 = r.register(Class::Stream, "tail_file", "/log", Some(Site { file: "a.test.lua".into(), line: 4 }));
        let g2 = r.register(Class::File, "open_file", "/x", None);
        assert_eq!((r.count(Class::Stream), r.count(Class::File)), (1, 1));
        assert_eq!(r.describe(), vec!["tail_file(\"/log\") created at a.test.lua:4", "open_file(\"/x\")"]);
        drop(g1);
        drop(g2);
        assert_eq!(r.count(Class::Stream), 0);
    }
}
