//! The wire protocol between the `provium` host and `provium-agent`.
//!
//! One byte stream (a virtio-serial port) carries everything, so every
//! [`frame::Frame`] names a *channel*. A request opens a channel, may carry
//! or receive bulk `Data` frames, and is closed by the agent's single
//! `Reply`. Many channels are in flight at once; streams are channels whose
//! `Data` is paced by host `Credit`.
//!
//! ```text
//!  host                                                agent
//!   | Hello{version}                  (channel 0)        |
//!   |--------------------------------------------------->|
//!   |                 HelloOk{version, kernel, uptime}   |
//!   |<---------------------------------------------------|
//!   | Request(1, Exec)  Request(2, Stat)                 |  concurrent
//!   |--------------------------------------------------->|
//!   |           Reply(2, Stat)   Reply(1, Exec)          |  any order
//!   |<---------------------------------------------------|
//! ```
//!
//! Message bodies are MessagePack with named fields ([`encode_msg`]);
//! `Data` bodies are raw bytes. [`PROTOCOL_VERSION`] pins all of it, and the
//! tests below pin exact bytes so that a silent change fails.

pub mod batch;
pub mod events;
pub mod frame;
mod hello;
pub mod layer0;
mod ops;

pub use batch::{BatchItem, BatchOp, MAX_BATCH_BYTES};
pub use frame::{Decoder, Frame, FrameError, FrameKind};
pub use hello::{Hello, HelloErr, HelloOk, PROTOCOL_VERSION};
pub use layer0::{BufArg, IoctlCall, IoctlOutcome, MemRead, NestedPtr, SyscallCall, SyscallOutcome, MAX_LAYER0_BYTES};
pub use ops::{
    DirEntry, EntryType, ExecOutput, ExecRequest, ExitStatus, Metadata, OpError, OpErrorKind, OpenMode, OutputPipe,
    ProcState, Reply, Request, Response, StreamSource, TailStart, Whence, WorkerSpec, AGENT_RETAIN,
};

/// A message body that could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode {what}")]
pub struct DecodeError {
    pub what: &'static str,
    #[source]
    pub source: rmp_serde::decode::Error,
}

/// Encodes a message body (MessagePack, fields by name).
pub fn encode_msg<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(msg).expect("protocol messages always serialize")
}

/// Decodes a message body; `what` names the message in the error.
pub fn decode_msg<T: serde::de::DeserializeOwned>(what: &'static str, body: &[u8]) -> Result<T, DecodeError> {
    rmp_serde::from_slice(body).map_err(|source| DecodeError { what, source })
}

#[cfg(test)]
mod pin_tests {
    //! Exact-bytes pins: if one of these fails, the wire format changed.
    //! Bump [`PROTOCOL_VERSION`] and update the expected bytes together.
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn version_is_pinned() {
        assert_eq!(PROTOCOL_VERSION, 7);
    }

    #[test]
    fn hello_bytes() {
        let b = encode_msg(&Hello { protocol_version: 1 });
        assert_eq!(hex(&b), "81b070726f746f636f6c5f76657273696f6e01");
    }

    #[test]
    fn exec_request_bytes() {
        let req = Request::Exec(ExecRequest {
            argv: vec!["sh".into(), "-c".into(), "true".into()],
            timeout_ms: Some(5),
            ..Default::default()
        });
        let b = encode_msg(&req);
        assert_eq!(
            hex(&b),
            "82a26f70a465786563a46172677386a461726776\
             93a27368a22d63a474727565a3656e7680a9656e765f636c656172c2a3637764c0a5737464696ec2\
             aa74696d656f75745f6d7305"
        );
        assert_eq!(decode_msg::<Request>("request", &b).unwrap(), req);
    }

    #[test]
    fn reply_bytes() {
        let ok: Reply = Ok(Response::Exec(ExitStatus::Exited(0)));
        assert_eq!(
            hex(&encode_msg(&ok)),
            "81a24f6b82a46b696e64a465786563a576616c756582a46b696e64a6657869746564a576616c756500"
        );
        let err: Reply = Err(OpError { kind: OpErrorKind::Os, errno: Some(2), message: "no such file".into() });
        assert_eq!(
            hex(&encode_msg(&err)),
            "81a3457272\
             83a46b696e64a26f73a56572726e6f02a76d657373616765ac6e6f20737563682066696c65"
        );
    }

    #[test]
    fn every_request_round_trips() {
        let reqs = vec![
            Request::Ping,
            Request::Exec(ExecRequest::default()),
            Request::ReadFile { path: "/a".into() },
            Request::WriteFile { path: "/a".into(), perm: 0o644, append: true },
            Request::Stat { path: "/".into(), follow_symlinks: false },
            Request::ListDir { path: "/".into() },
            Request::Mkdir { path: "/x/y".into(), parents: true, perm: 0o755 },
            Request::Unlink { path: "/x".into() },
            Request::Rename { from: "/a".into(), to: "/b".into() },
            Request::Spawn(ExecRequest { stdin: true, ..Default::default() }),
            Request::Wait { handle: 3, timeout_ms: Some(0), kill_on_timeout: false },
            Request::Signal { handle: 3, signal: 15 },
            Request::StdinWrite { handle: 3, data: b"x".to_vec() },
            Request::StdinClose { handle: 3 },
            Request::Release { handle: 3 },
            Request::OpenFile { path: "/f".into(), mode: OpenMode { read: true, ..Default::default() }, perm: 0o644 },
            Request::Read { handle: 4, max: 10 },
            Request::Write { handle: 4, data: vec![1, 2] },
            Request::Seek { handle: 4, offset: -2, whence: Whence::End },
            Request::Stream {
                source: StreamSource::File { path: "/l".into(), start: TailStart::FromEnd(5) },
                window: 1 << 20,
            },
            Request::Stream { source: StreamSource::Stdout { handle: 3 }, window: 1 },
            Request::WaitPort { port: 8080, open: true, timeout_ms: 10 },
            Request::WaitPath { path: "/p".into(), exists: false, timeout_ms: 10 },
            Request::SetTime { ns: -1 },
            Request::GetTime,
            Request::NetConfig {
                mac: "52:54:00:01:02:03".into(),
                set_mac: Some("52:54:00:0a:0b:0c".into()),
                up: true,
                address: Some("10.0.0.2".into()),
                prefix: 24,
            },
            Request::DefaultRoute { gateway: "10.0.0.1".into(), present: true },
            Request::Syscall(SyscallCall {
                nr: 20,
                args: [3, 0, 1, 0, 0, -1],
                bufs: vec![vec![0; 16], b"hi".to_vec(), vec![]],
                ptrs: vec![BufArg { buf: 0, arg: 1 }],
                nested: vec![NestedPtr { parent: 0, child: 1, offset: 0 }],
            }),
            Request::Ioctl(IoctlCall {
                handle: 4,
                cmd: 0x541b,
                data: vec![0; 4],
                bufs: vec![b"x".to_vec()],
                ptr_offsets: vec![0],
            }),
            Request::ReadMem { addr: u64::MAX, len: 8 },
            Request::Batch {
                ops: vec![
                    BatchOp::Exec(ExecRequest::default()),
                    BatchOp::WriteFile { path: "/a".into(), perm: 0o600, data: b"x".to_vec() },
                    BatchOp::Stat { path: "/".into(), follow_symlinks: true },
                    BatchOp::Syscall(SyscallCall::default()),
                ],
            },
            Request::SpawnWorker(WorkerSpec { uid: Some(1000), gid: Some(1000), groups: Some(vec![10, 20]) }),
            Request::SpawnWorker(WorkerSpec::default()),
            Request::Worker { worker: 7, request: Box::new(Request::Exec(ExecRequest::default())) },
            Request::Worker {
                worker: 7,
                request: Box::new(Request::Stream { source: StreamSource::Stderr { handle: 9 }, window: 64 }),
            },
            Request::KillAll { signal: 15 },
            Request::Join { timeout_ms: Some(2000) },
            Request::Join { timeout_ms: None },
        ];
        for r in reqs {
            let back: Request = decode_msg("request", &encode_msg(&r)).unwrap();
            assert_eq!(back, r);
        }
    }

    #[test]
    fn every_layer0_response_round_trips() {
        let replies: Vec<Reply> = vec![
            Ok(Response::Syscall(SyscallOutcome { ret: -1, errno: 2, out_bufs: vec![b"/x\0".to_vec(), vec![]] })),
            Ok(Response::Ioctl(IoctlOutcome { ret: 0, errno: 0, out_data: vec![5, 0, 0, 0], out_bufs: vec![] })),
            Ok(Response::Memory(MemRead::Bytes(b"Linux".to_vec()))),
            Ok(Response::Memory(MemRead::Errno(5))),
        ];
        for r in replies {
            let back: Reply = decode_msg("reply", &encode_msg(&r)).unwrap();
            assert_eq!(back, r);
        }
    }

    #[test]
    fn worker_messages_round_trip_and_are_pinned() {
        let replies: Vec<Reply> = vec![
            Ok(Response::Worker { handle: 3, pid: 245 }),
            Ok(Response::Joined { status: 137 }),
            Err(OpError { kind: OpErrorKind::WorkerGone, errno: None, message: "worker 3 died".into() }),
        ];
        for r in replies {
            let back: Reply = decode_msg("reply", &encode_msg(&r)).unwrap();
            assert_eq!(back, r);
        }
        // The relayed request rides whole inside `request`.
        let req = Request::Worker { worker: 3, request: Box::new(Request::Ping) };
        assert_eq!(
            hex(&encode_msg(&req)),
            "82a26f70a6776f726b6572a46172677382a6776f726b657203a772657175657374\
             81a26f70a470696e67"
        );
    }

    #[test]
    fn layer0_buffers_travel_as_bin() {
        // `bufs` is an array of msgpack bin (0xc4 <len> <bytes>), not of
        // integers: a 4 KiB buffer costs 4 KiB on the wire.
        let call = Request::Syscall(SyscallCall { nr: 63, bufs: vec![b"ab".to_vec()], ..Default::default() });
        let b = hex(&encode_msg(&call));
        assert!(b.contains("a46275667391c4026162"), "{b}");
        let r: Reply = Ok(Response::Memory(MemRead::Bytes(vec![0x41])));
        assert_eq!(
            hex(&encode_msg(&r)),
            "81a24f6b82a46b696e64a66d656d6f7279a576616c756582a46b696e64a562797465\
             73a576616c7565c40141"
        );
    }

    #[test]
    fn stream_request_bytes() {
        let req = Request::Stream { source: StreamSource::Stdout { handle: 7 }, window: 65536 };
        assert_eq!(
            hex(&encode_msg(&req)),
            "82a26f70a673747265616da46172677382a6736f7572636582a46b696e64a67374646f7574a668616e646c6507\
             a677696e646f77ce00010000"
        );
    }

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        assert!(decode_msg::<Request>("request", &[0xc1, 0xff, 0x00]).is_err());
        assert!(decode_msg::<Reply>("reply", &[]).is_err());
    }
}
