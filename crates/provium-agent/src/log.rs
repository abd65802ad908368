//! Diagnostics to the kernel log (`/dev/kmsg`), which lands on the guest
//! console that provium captures. Logged at error level so that `quiet`
//! guests still show them. Never used for protocol traffic.

use std::io::Write;

pub fn warn(msg: &str) {
    let line = format!("<3>provium-agent: {msg}\n");
    match std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        Ok(mut f) => {
            let _ = f.write_all(line.as_bytes());
        }
        Err(_) => eprintln!("provium-agent: {msg}"),
    }
}
