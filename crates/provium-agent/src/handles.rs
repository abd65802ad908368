//! The agent's handle table: spawned processes, open files and workers
//! under one counter.
//!
//! Handles are agent-global. They outlive the host session that made them (a
//! new `Hello` drops channels, not processes or files) and go away only with
//! `Release`. Numbers start at 1 and are never reused, so a stale handle is
//! always [`OpErrorKind::UnknownHandle`], never somebody else's object. This
//! module owns the table only; what a process, a file or a worker does lives
//! in [`crate::proc`], [`crate::files`] and [`crate::workers`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use provium_protocol::{OpError, OpErrorKind};

use crate::files::OpenFile;
use crate::proc::Proc;
use crate::workers::Worker;

#[derive(Clone)]
pub enum Handle {
    Proc(Arc<Proc>),
    File(Arc<OpenFile>),
    Worker(Arc<Worker>),
}

impl Handle {
    fn kind(&self) -> &'static str {
        match self {
            Handle::Proc(_) => "a process",
            Handle::File(_) => "a file",
            Handle::Worker(_) => "a worker",
        }
    }
}

struct Table {
    next: u64,
    map: HashMap<u64, Handle>,
}

fn table() -> &'static Mutex<Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    TABLE.get_or_init(|| Mutex::new(Table { next: 1, map: HashMap::new() }))
}

/// Registers an object and returns its new handle.
pub fn insert(h: Handle) -> u64 {
    let mut t = table().lock().unwrap();
    let id = t.next;
    t.next += 1;
    t.map.insert(id, h);
    id
}

fn unknown(id: u64) -> OpError {
    OpError {
        kind: OpErrorKind::UnknownHandle,
        errno: None,
        message: format!("unknown handle {id}: released, or never opened in this guest"),
    }
}

fn wrong_kind(id: u64, is: &str, wanted: &str) -> OpError {
    OpError { kind: OpErrorKind::BadRequest, errno: None, message: format!("handle {id} is {is}, not {wanted}") }
}

pub fn get(id: u64) -> Result<Handle, OpError> {
    table().lock().unwrap().map.get(&id).cloned().ok_or_else(|| unknown(id))
}

pub fn proc(id: u64) -> Result<Arc<Proc>, OpError> {
    match get(id)? {
        Handle::Proc(p) => Ok(p),
        other => Err(wrong_kind(id, other.kind(), "a process")),
    }
}

pub fn file(id: u64) -> Result<Arc<OpenFile>, OpError> {
    match get(id)? {
        Handle::File(f) => Ok(f),
        other => Err(wrong_kind(id, other.kind(), "a file")),
    }
}

pub fn worker(id: u64) -> Result<Arc<Worker>, OpError> {
    match get(id)? {
        Handle::Worker(w) => Ok(w),
        other => Err(wrong_kind(id, other.kind(), "a worker")),
    }
}

/// Forgets a handle; the caller finishes the object off.
pub fn remove(id: u64) -> Result<Handle, OpError> {
    table().lock().unwrap().map.remove(&id).ok_or_else(|| unknown(id))
}
