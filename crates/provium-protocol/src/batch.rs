//! `Batch`: several operations in one request, answered in one reply, for
//! tests that make many small calls (`vm:batch(fn)`). Each op runs in order
//! and answers for itself, so one failure does not stop the rest.
//!
//! Bulk bytes ride inside the messages here (a file to write, a command's
//! output, a file read), so a batch's reply is bounded: an op whose bytes
//! would pass [`MAX_BATCH_BYTES`] (all ops together) fails on its own with
//! a message pointing to the single-op call.

use serde::{Deserialize, Serialize};

use crate::layer0::SyscallCall;
use crate::ops::{ExecRequest, Reply};

/// The most bytes (outputs and file contents together) one batch carries
/// back; well inside a frame's body limit.
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// One operation of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", content = "args", rename_all = "snake_case")]
pub enum BatchOp {
    /// Runs a command (no stdin); its output comes back in the item.
    Exec(ExecRequest),
    /// The file's contents come back in the item's `stdout`.
    ReadFile {
        path: String,
    },
    WriteFile {
        path: String,
        perm: u32,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    Stat {
        path: String,
        follow_symlinks: bool,
    },
    ListDir {
        path: String,
    },
    Mkdir {
        path: String,
        parents: bool,
        perm: u32,
    },
    Unlink {
        path: String,
    },
    Rename {
        from: String,
        to: String,
    },
    Syscall(SyscallCall),
}

impl BatchOp {
    /// The op as `vm:batch`'s recorder names it (`run`, `stat`, …).
    pub fn name(&self) -> &'static str {
        match self {
            BatchOp::Exec(_) => "run",
            BatchOp::ReadFile { .. } => "read_file",
            BatchOp::WriteFile { .. } => "write_file",
            BatchOp::Stat { .. } => "stat",
            BatchOp::ListDir { .. } => "listdir",
            BatchOp::Mkdir { .. } => "mkdir",
            BatchOp::Unlink { .. } => "unlink",
            BatchOp::Rename { .. } => "rename",
            BatchOp::Syscall(_) => "syscall",
        }
    }
}

/// What one op answered: its reply, and the bytes it produced (a command's
/// stdout and stderr; a read file's contents in `stdout`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchItem {
    pub reply: Reply,
    #[serde(with = "serde_bytes")]
    pub stdout: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub stderr: Vec<u8>,
}
