//! Process stdout stream throughput, against `read_file` of the same file,
//! and the host memory a slow reader of that stream holds.
//!
//! The file is written into the guest once; each run spawns
//! `sh -c 'read _; exec cat FILE'` with stdin open, opens
//! `open_stream(Stdout, DEFAULT_WINDOW)`, then releases the gate with a
//! newline on stdin, so `cat` starts only once the stream is subscribed
//! (a subscriber that arrives after the agent's 12 MiB retention is full
//! misses bytes) and the timing starts from an idle process.

use std::time::{Duration, Instant};

use provium::agent::{AgentClient, AgentStream, Chunk, DEFAULT_WINDOW};
use provium_protocol::{ExecRequest, StreamSource};

use crate::measure::{agent_step, pseudo_random, BenchError};
use crate::report::{SlowReader, StreamIo};

const FILE: &str = "/tmp/provium-bench-stream.bin";
/// What the slow reader sleeps after each chunk.
const SLOW_SLEEP: Duration = Duration::from_millis(2);
/// A stream that delivers nothing for this long has failed.
const STALL: Duration = Duration::from_secs(30);

fn mib_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// FNV-1a, 64 bit: cheap, order-sensitive, independent of chunking.
fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}
const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// Spawns the gated `cat` and subscribes to its stdout. The timer of a run
/// starts before this stream is opened; `cat` starts at [`go`].
fn gated_cat(a: &AgentClient) -> Result<(u64, AgentStream), BenchError> {
    let req =
        ExecRequest { argv: vec!["sh".into(), "-c".into(), format!("read _; exec cat {FILE}")], ..Default::default() };
    let (handle, _pid) = agent_step("spawn cat", a.spawn(req, true))?;
    let stream = agent_step("open_stream", a.open_stream(StreamSource::Stdout { handle }, DEFAULT_WINDOW))?;
    Ok((handle, stream))
}

fn go(a: &AgentClient, handle: u64) -> Result<(), BenchError> {
    agent_step("stdin_write", a.stdin_write(handle, b"\n")).map(drop)
}

/// Feeds every chunk to `each` until `Chunk::Eof`.
fn drain(stream: &mut AgentStream, mut each: impl FnMut(Vec<u8>)) -> Result<(), BenchError> {
    loop {
        match stream.next(STALL) {
            Chunk::Data(bytes) => each(bytes),
            Chunk::Eof => return Ok(()),
            Chunk::Timeout => {
                return Err(BenchError::Guest {
                    step: "stdout stream".into(),
                    message: format!("nothing arrived for {STALL:?}"),
                })
            }
            Chunk::Failed(message) => return Err(BenchError::Guest { step: "stdout stream".into(), message }),
        }
    }
}

fn check(what: &'static str, got: &[u8], want: &[u8]) -> Result<(), BenchError> {
    if got == want {
        return Ok(());
    }
    Err(BenchError::Mismatch {
        what,
        got: got.len(),
        want: want.len(),
        at: got.iter().zip(want).position(|(a, b)| a != b),
    })
}

/// A `kB` field of `/proc/self/status`, in bytes.
pub(crate) fn self_status(field: &str) -> Result<u64, BenchError> {
    let text = std::fs::read_to_string("/proc/self/status").map_err(BenchError::SelfStatus)?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| BenchError::SelfStatus(std::io::Error::other(format!("no {field} in /proc/self/status"))))
}

/// Resets VmHWM to the current VmRSS (`echo 5 > /proc/self/clear_refs`).
pub(crate) fn reset_peak() -> Result<(), BenchError> {
    std::fs::write("/proc/self/clear_refs", "5").map_err(BenchError::SelfStatus)
}

const MIB: f64 = (1 << 20) as f64;

/// Stream vs read_file throughput (best of 3, interleaved), then the slow
/// reader's host memory, on a booted VM.
pub fn measure(a: &AgentClient, bytes: usize) -> Result<StreamIo, BenchError> {
    let data = pseudo_random(bytes);
    agent_step("write_file", a.write_file(FILE, &data, 0o644, false))?;
    let (mut best_s, mut best_r) = (Duration::MAX, Duration::MAX);
    let mut chunks = 0;
    for i in 1..=3 {
        let t = Instant::now();
        let back = agent_step("read_file", a.read_file(FILE))?;
        let r = t.elapsed();
        check("read_file", &back, &data)?;
        drop(back);

        let (handle, mut stream) = gated_cat(a)?;
        let t = Instant::now();
        // Excluded from the timing: spawning the (gated) process. Included:
        // subscribing, the gate, the exec of cat, every byte.
        let mut got = Vec::new();
        go(a, handle)?;
        chunks = 0;
        drain(&mut stream, |b| {
            chunks += 1;
            got.extend_from_slice(&b)
        })?;
        let s = t.elapsed();
        drop(stream);
        agent_step("release cat", a.release(handle))?;
        check("the stdout stream", &got, &data)?;
        drop(got);
        eprintln!(
            "stdout stream {i}/3: {:.1} MiB/s ({chunks} chunks); read_file {:.1} MiB/s (both verified)",
            mib_s(bytes, s),
            mib_s(bytes, r)
        );
        best_s = best_s.min(s);
        best_r = best_r.min(r);
    }
    let sum = fnv1a(FNV_START, &data);
    drop(data);

    // A slow reader: sleep after each chunk; watch this process's RSS.
    let rss_before = self_status("VmRSS")?;
    reset_peak()?;
    let (handle, mut stream) = gated_cat(a)?;
    let t = Instant::now();
    go(a, handle)?;
    let (mut n, mut got_sum, mut slow_chunks, mut max_rss) = (0usize, FNV_START, 0usize, rss_before);
    let mut sample_err = None;
    drain(&mut stream, |b| {
        n += b.len();
        got_sum = fnv1a(got_sum, &b);
        slow_chunks += 1;
        drop(b);
        match self_status("VmRSS") {
            Ok(rss) => max_rss = max_rss.max(rss),
            Err(e) => sample_err = Some(e),
        }
        std::thread::sleep(SLOW_SLEEP);
    })?;
    let slow_took = t.elapsed();
    let hwm = self_status("VmHWM")?;
    drop(stream);
    agent_step("release cat", a.release(handle))?;
    if let Some(e) = sample_err {
        return Err(e);
    }
    if n != bytes || got_sum != sum {
        return Err(BenchError::Guest {
            step: "slow stdout stream".into(),
            message: format!("got {n} bytes (FNV-1a {got_sum:#x}), want {bytes} ({sum:#x})"),
        });
    }

    // The contrast: read_file holds the whole file in host memory.
    let rf_before = self_status("VmRSS")?;
    reset_peak()?;
    let back = agent_step("read_file", a.read_file(FILE))?;
    let rf_hwm = self_status("VmHWM")?;
    let rf_ok = back.len() == bytes && fnv1a(FNV_START, &back) == sum;
    drop(back);
    if !rf_ok {
        return Err(BenchError::Guest { step: "read_file (memory)".into(), message: "bytes differ".into() });
    }
    agent_step("unlink", a.unlink(FILE))?;

    let slow = SlowReader {
        sleep_ms: SLOW_SLEEP.as_secs_f64() * 1e3,
        chunks: slow_chunks,
        secs: slow_took.as_secs_f64(),
        mib_s: mib_s(bytes, slow_took),
        rss_before_mib: rss_before as f64 / MIB,
        peak_growth_mib: hwm.saturating_sub(rss_before) as f64 / MIB,
        sampled_growth_mib: max_rss.saturating_sub(rss_before) as f64 / MIB,
        checksum_ok: true,
        read_file_peak_growth_mib: rf_hwm.saturating_sub(rf_before) as f64 / MIB,
    };
    eprintln!(
        "slow reader: {} chunks in {:.1} s; VmHWM +{:.2} MiB (sampled VmRSS +{:.2} MiB); read_file VmHWM +{:.1} MiB",
        slow.chunks, slow.secs, slow.peak_growth_mib, slow.sampled_growth_mib, slow.read_file_peak_growth_mib
    );
    let stream_mib_s = mib_s(bytes, best_s);
    let read_file_mib_s = mib_s(bytes, best_r);
    Ok(StreamIo {
        what: "a spawned `cat` of a file of pseudo-random bytes in the guest's /tmp read through \
               open_stream(Stdout, DEFAULT_WINDOW) until Eof (subscribe, gate, exec of cat and every byte \
               timed; spawn not), beside read_file of the same file, interleaved on the same VM, best of 3; \
               every byte compared",
        bytes,
        window: DEFAULT_WINDOW,
        chunks,
        stream_mib_s,
        read_file_mib_s,
        stream_best_ms: best_s.as_secs_f64() * 1e3,
        read_file_best_ms: best_r.as_secs_f64() * 1e3,
        stream_over_read_file: stream_mib_s / read_file_mib_s,
        verified: true,
        slow_reader: slow,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_is_independent_of_chunking() {
        let d = pseudo_random(1000);
        let whole = fnv1a(FNV_START, &d);
        let split = d.chunks(7).fold(FNV_START, fnv1a);
        assert_eq!(whole, split);
        assert_ne!(whole, fnv1a(FNV_START, &d[1..]));
    }

    #[test]
    fn own_status_fields_read() {
        assert!(self_status("VmRSS").unwrap() > 0);
        assert!(self_status("VmHWM").unwrap() >= self_status("VmRSS").unwrap() / 2);
    }
}
