//! `Batch`: runs each op of one request in order and answers them all in
//! one reply. Every op reuses its single-request handler; what it would
//! send as `Data` (a command's output, a file's contents) is captured
//! instead, within [`MAX_BATCH_BYTES`] for the whole batch. An op that
//! fails, or whose bytes do not fit, answers with its error and the rest
//! go on.

use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};

use provium_protocol::{BatchItem, BatchOp, OpError, OpErrorKind, Response, MAX_BATCH_BYTES};

use crate::session::{Captured, Inbound, Sender};
use crate::sys::CancelFlag;
use crate::{exec, fsops, syscall};

pub fn run(ops: Vec<BatchOp>, out: &Sender, cancel: &CancelFlag) -> Response {
    let mut budget = MAX_BATCH_BYTES;
    let mut items = Vec::with_capacity(ops.len());
    for op in ops {
        let capture = Arc::new(Mutex::new(Captured { budget, ..Default::default() }));
        let sink = out.capturing(capture.clone());
        let name = op.name();
        let mut reply = one(op, &sink, cancel);
        let mut c = std::mem::take(&mut *capture.lock().unwrap());
        if !c.overflowed {
            budget = c.budget;
        } else {
            // Its bytes are dropped, so the next ops get the room back.
            (c.stdout, c.stderr) = (Vec::new(), Vec::new());
            reply = Err(OpError {
                kind: OpErrorKind::BadRequest,
                errno: None,
                message: format!(
                    "batch: {name}: its output does not fit in a batch ({} MiB for all ops); make this call on its own",
                    MAX_BATCH_BYTES >> 20
                ),
            });
        }
        items.push(BatchItem { reply, stdout: c.stdout, stderr: c.stderr });
    }
    Response::Batch(items)
}

fn one(op: BatchOp, sink: &Sender, cancel: &CancelFlag) -> Result<Response, OpError> {
    match op {
        BatchOp::Exec(mut req) => {
            req.stdin = false;
            let (_tx, inbox) = channel();
            exec::run(req, sink, inbox, cancel).map(Response::Exec)
        }
        BatchOp::ReadFile { path } => fsops::read_file(&path, sink),
        BatchOp::WriteFile { path, perm, data } => {
            let (tx, inbox) = channel();
            // The receiver is alive until write_file returns: these cannot fail.
            let _ = tx.send(Inbound::Data(data));
            let _ = tx.send(Inbound::DataEnd);
            fsops::write_file(&path, perm, false, &inbox)
        }
        BatchOp::Stat { path, follow_symlinks } => fsops::stat(&path, follow_symlinks),
        BatchOp::ListDir { path } => fsops::listdir(&path),
        BatchOp::Mkdir { path, parents, perm } => fsops::mkdir(&path, parents, perm),
        BatchOp::Unlink { path } => fsops::unlink(&path),
        BatchOp::Rename { from, to } => fsops::rename(&from, &to),
        BatchOp::Syscall(call) => syscall::syscall(call),
    }
}
