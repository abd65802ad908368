//! Whatever decodes must re-encode to something that decodes to the same
//! value, and survive a trip through a frame.
//!
//! The input is taken as a message body directly (no frame header), decoded
//! as a `Request` and as a `Reply`. Each success is re-encoded with
//! `encode_msg`, wrapped in a frame, fed to a `Decoder` one byte at a time,
//! and must come back equal.

#![no_main]

use libfuzzer_sys::fuzz_target;
use provium_protocol::frame::{encode, Decoder, FrameKind};
use provium_protocol::{decode_msg, encode_msg, Reply, Request};

fuzz_target!(|body: &[u8]| {
    if let Ok(req) = decode_msg::<Request>("request", body) {
        let back: Request = through_frame(FrameKind::Request, &encode_msg(&req));
        assert_eq!(back, req);
    }
    if let Ok(reply) = decode_msg::<Reply>("reply", body) {
        let back: Reply = through_frame(FrameKind::Reply, &encode_msg(&reply));
        assert_eq!(back, reply);
    }
});

fn through_frame<T: serde::de::DeserializeOwned>(kind: FrameKind, body: &[u8]) -> T {
    let wire = encode(42, kind, body);
    let mut decoder = Decoder::new();
    let mut frames = Vec::new();
    for b in &wire {
        decoder.feed(std::slice::from_ref(b));
        while let Some(f) = decoder.next_frame().expect("re-encoded frame decodes") {
            frames.push(f);
        }
    }
    assert_eq!(frames.len(), 1);
    let f = frames.pop().unwrap();
    assert_eq!((f.channel, f.kind, f.body.as_slice()), (42, kind, body));
    decode_msg(kind_name(kind), &f.body).expect("re-encoded message decodes")
}

fn kind_name(kind: FrameKind) -> &'static str {
    match kind {
        FrameKind::Request => "request",
        _ => "reply",
    }
}
