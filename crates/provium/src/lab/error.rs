//! What a lab operation can fail with. Names are quoted with the call that
//! used them; a batch lists each VM's failure with its cause chain.

use std::path::PathBuf;

use crate::vm::VmError;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("provium:{what}(\"{name}\", …): a name is letters, digits, `_`, `-` and `.`, not starting with `.`")]
    BadName { what: &'static str, name: String },
    #[error(
        "provium:{what}(\"{name}\", …): `{name}` is reserved (lab.{name} means something else: pack, unpack, \
         vm_fixture, lab_fixture, reset_between_tests and timeout are taken); pick another name"
    )]
    Reserved { what: &'static str, name: String },
    #[error(
        "provium:{what}(\"{name}\", …): name already declared at a parent scope (lab `{parent}`). Pick a different \
         name, or use provium:{what}(\"{name}\") to reuse the parent-scope one."
    )]
    DeclaredAbove { what: &'static str, name: String, parent: String },
    #[error("provium:{what}: name `{name}` already used in lab `{lab}`")]
    Taken { what: &'static str, name: String, lab: String },
    #[error("lab:restore: bridge `{name}` cannot be rebuilt")]
    Bridge {
        name: String,
        #[source]
        source: Box<crate::net::BridgeError>,
    },
    #[error("provium:vm: no vm named `{name}` in lab `{lab}`")]
    NoSuchVm { name: String, lab: String },
    #[error("lab:remove: no vm, bridge or lab named `{name}` in lab `{lab}`")]
    NoSuchMember { name: String, lab: String },
    #[error("lab:include: lab `{lab}` cannot include itself")]
    IncludeSelf { lab: String },
    /// A lab's joint reservation (`lab:boot()`, a lab restore) failed;
    /// `what` names the lab and the operation.
    #[error("{what} cannot reserve for its members")]
    Reserve {
        what: String,
        #[source]
        source: crate::pool::PoolError,
    },
    /// An operation run on several VMs at once failed on some of them.
    #[error("batch `{what}` failed:\n{}", failures.iter().map(|(vm, e)| format!("  {vm}: {}", crate::errors::chain(e))).collect::<Vec<_>>().join("\n"))]
    Batch { what: &'static str, failures: Vec<(String, VmError)> },
    #[error(
        "lab:snapshot() failed for lab `{lab}`: {} open stream(s) or file handle(s)\n{}\n  Close streams and files \
         before snapshotting.",
        open.len(),
        open.join("\n")
    )]
    NotQuiescent { lab: String, open: Vec<String> },
    #[error("lab:snapshot: cannot create `{path}`")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lab:snapshot: cannot write `{path}`")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lab:restore: `{dir}` is not a lab snapshot (cannot read its lab.json)")]
    NotALab {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lab:restore: `{path}` is corrupt")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("lab:restore: `{path}` is corrupt: bad name `{name}`")]
    CorruptName { path: PathBuf, name: String },
    #[error(
        "{file}: cannot use reset_between_tests with file-scope streams\n{}\n  reset_between_tests would \
         auto-snapshot after this stream is open\n  Either move the stream into a test() block, or set \
         reset_between_tests = false.",
        streams.join("\n")
    )]
    ResetWithStreams { file: String, streams: Vec<String> },
    #[error("reset_between_tests baseline snapshot failed")]
    Baseline(#[source] Box<LabError>),
}
