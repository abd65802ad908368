//! [`Vm::batch`]: many small ops in one round trip to the agent
//! (`vm:batch(fn)`). Each op answers for itself ([`BatchOutcome`]), so one
//! failure does not stop the others; the VM-level error (a dead VM, a wrong
//! state) fails the whole batch.

use provium_protocol::{BatchItem, BatchOp, DirEntry, ExecOutput, Metadata, Response, SyscallOutcome};

use super::{Vm, VmError};

/// What one op of a batch gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOutcome {
    Ran(ExecOutput),
    Read(Vec<u8>),
    Done,
    Stat(Metadata),
    Listed(Vec<DirEntry>),
    Syscall(SyscallOutcome),
    /// The op failed in the guest; the message says why.
    Failed(String),
}

impl Vm {
    /// Runs `ops` in order in one request; one outcome per op.
    pub fn batch(&mut self, ops: Vec<BatchOp>) -> Result<Vec<BatchOutcome>, VmError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let reads: Vec<bool> = ops.iter().map(|op| matches!(op, BatchOp::ReadFile { .. })).collect();
        let items = self.with_agent("batch", |a| a.batch(ops))?;
        Ok(items.into_iter().zip(reads).map(|(item, read)| outcome(item, read)).collect())
    }
}

fn outcome(item: BatchItem, read: bool) -> BatchOutcome {
    match item.reply {
        Err(e) => BatchOutcome::Failed(e.message),
        Ok(Response::Exec(status)) => {
            BatchOutcome::Ran(ExecOutput { status, stdout: item.stdout, stderr: item.stderr })
        }
        Ok(Response::Done) if read => BatchOutcome::Read(item.stdout),
        Ok(Response::Done) => BatchOutcome::Done,
        Ok(Response::Stat(md)) => BatchOutcome::Stat(md),
        Ok(Response::ListDir(entries)) => BatchOutcome::Listed(entries),
        Ok(Response::Syscall(out)) => BatchOutcome::Syscall(out),
        Ok(other) => BatchOutcome::Failed(format!("batch: unexpected answer {other:?}")),
    }
}
