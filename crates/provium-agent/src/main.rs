//! `provium-agent`: the small static program provium injects into every guest.
//!
//! It starts as the kernel's `rdinit`. As PID 1 with an image `/init`, it
//! forks: the parent `exec`s `/init` (which keeps PID 1) and the child serves.
//! Without an `/init` it is the init itself: it mounts the basic filesystems,
//! reaps orphans and never exits. Either way it then loads the kernel modules
//! it needs, opens the virtio-serial port named [`PORT_NAME`] and serves the
//! host's requests over it ([`session`]).
//!
//! ```text
//! main ─ init (shim or standalone; rootfs: switch to a disk root) ─ kmod (finit_module) ─ reaper thread ─ port (open) ─ session
//!
//! session: reader thread ─┬─ Ping / SetTime / GetTime: answered on the reader thread, in order
//!                         └─ any other request ─ pool worker ─ exec / fsops / files / proc / stream / waits
//!                                                              / syscall (raw syscall, ioctl, read_mem)
//! pool:    an idle worker takes the next request; a new thread starts only when none is idle,
//!          and a worker that finds 8 others idle ends (so threads are reused across requests)
//! proc:    a pump thread per spawned process;  exec: a stdin feeder thread per command fed stdin
//! reaper:  one thread reaps every child exit and wakes whoever waits for it
//! handles: agent-global table of spawned processes, open files and workers
//! workers: `SpawnWorker` re-runs this binary as a worker (worker_mode: own uid/gid, the same
//!          session over a socket pair); `Worker{w, req}` is relayed to it, frames both ways
//! ```

mod batch;
mod elf;
mod exec;
mod files;
mod fsops;
mod handles;
mod hwrng;
mod init;
mod inotify;
mod kmod;
mod log;
mod net;
mod pool;
mod port;
mod power;
mod proc;
mod reaper;
mod rootfs;
mod services;
mod session;
mod spawn;
mod stream;
mod sys;
mod syscall;
mod tail;
mod waits;
mod worker_mode;
mod workers;

/// The name of the virtio-serial port the host listens on.
pub const PORT_NAME: &str = "provium.agent";

fn main() {
    if worker_mode::requested() {
        worker_mode::run();
    }
    let start_uptime_ms = init::boottime_ms();
    let mode = init::become_init();
    kmod::load_wanted();
    if mode == init::Mode::Standalone {
        rootfs::link_disks_by_id();
    }
    hwrng::quiet_kernel_reader_if_asked();
    init::bring_up_loopback();
    reaper::start();
    if mode == init::Mode::Standalone {
        power::start();
        power::handle_poweroff_signals();
        services::start_syslog();
    }
    let info = session::AgentInfo {
        start_uptime_ms,
        standalone: mode == init::Mode::Standalone,
        kernel: kmod::kernel_release(),
    };
    loop {
        match port::open(PORT_NAME) {
            Ok(port) => session::serve(port, &info, session::Link::Port),
            Err(e) => log::warn(&format!("cannot open port `{PORT_NAME}`: {e}; retrying")),
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
