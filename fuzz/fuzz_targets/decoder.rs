//! Fuzzes the host/agent frame decoder and the message decoders behind it.
//!
//! Input layout: the first two bytes (u16 LE) choose where the rest is split
//! into two `feed` calls, so that a frame header or body straddling two
//! reads is exercised. Every complete frame's body is then decoded both as a
//! `Request` and as a `Reply`: whatever a peer sends, neither side may panic
//! or allocate more than the bytes in front of it justify (the run uses
//! `-malloc_limit_mb` to catch that).

#![no_main]

use libfuzzer_sys::fuzz_target;
use provium_protocol::frame::{Decoder, HEADER_LEN, MAX_BODY};
use provium_protocol::{decode_msg, Reply, Request};

fuzz_target!(|data: &[u8]| {
    let (split, stream) = match data {
        [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]) as usize, rest),
        _ => return,
    };
    let split = split % (stream.len() + 1);
    let mut decoder = Decoder::new();
    decoder.feed(&stream[..split]);
    let mut consumed = drain(&mut decoder);
    decoder.feed(&stream[split..]);
    consumed += drain(&mut decoder);
    // Every byte is either in a returned frame or still pending, unless the
    // decoder reported an error (after which the stream is abandoned).
    assert!(consumed + decoder.pending() <= stream.len());
});

/// Takes frames out until more bytes are needed or the stream is bad;
/// returns how many bytes the frames took.
fn drain(decoder: &mut Decoder) -> usize {
    let mut consumed = 0;
    loop {
        match decoder.next_frame() {
            Ok(Some(frame)) => {
                assert!(frame.body.len() <= MAX_BODY);
                consumed += HEADER_LEN + frame.body.len();
                let _ = decode_msg::<Request>("request", &frame.body);
                let _ = decode_msg::<Reply>("reply", &frame.body);
            }
            Ok(None) | Err(_) => return consumed,
        }
    }
}
