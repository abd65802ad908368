//! The ACPI power button, for the agent acting as init: watches every input
//! device for `KEY_POWER` and powers the guest off cleanly (sync, then
//! `reboot(POWER_OFF)`), the way an init system would. It also answers
//! busybox's `poweroff` and `halt`, which ask PID 1 with SIGUSR2 and SIGUSR1
//! (the kernel delivers a signal to PID 1 only if it has a handler). When
//! the image has its own init, that init handles all of this and none of it
//! is started.

use std::io::Read;
use std::time::Duration;

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;
/// `struct input_event` on 64-bit: timeval (16) + type (2) + code (2) + value (4).
const EVENT_SIZE: usize = 24;

/// Whether one raw `input_event` is the power key going down.
fn is_power_press(ev: &[u8]) -> bool {
    let ty = u16::from_ne_bytes([ev[16], ev[17]]);
    let code = u16::from_ne_bytes([ev[18], ev[19]]);
    let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
    ty == EV_KEY && code == KEY_POWER && value == 1
}

fn watch(mut dev: std::fs::File) {
    let mut ev = [0u8; EVENT_SIZE];
    while dev.read_exact(&mut ev).is_ok() {
        if is_power_press(&ev) {
            crate::log::warn("power button pressed; powering off");
            // SAFETY: sync(2) takes no arguments and reboot(2) only the
            // command integer; neither touches memory of ours. The agent is
            // PID 1 here (this watcher runs only in standalone mode), so
            // there is no other init whose shutdown this would cut short.
            unsafe {
                libc::sync();
                libc::reboot(libc::RB_POWER_OFF);
            }
        }
    }
}

/// `poweroff` / `halt` from busybox: sync, then power off.
extern "C" fn on_poweroff_request(_sig: libc::c_int) {
    // SAFETY: sync(2) and reboot(2) are async-signal-safe system calls that
    // take no memory of ours. The agent is PID 1 here (installed only in
    // standalone mode), so no other init's shutdown is cut short.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
}

/// Makes PID 1 honour busybox's `poweroff` (SIGUSR2) and `halt` (SIGUSR1).
pub fn handle_poweroff_signals() {
    for sig in [libc::SIGUSR1, libc::SIGUSR2] {
        // SAFETY: signal(2) installs a handler for one signal number; the
        // handler is an `extern "C"` fn that only makes async-signal-safe
        // system calls. Children reset it to the default on exec.
        unsafe { libc::signal(sig, on_poweroff_request as *const () as libc::sighandler_t) };
    }
}

/// Starts one watcher thread per input device. The devices are opened
/// before the agent starts serving, so a press right after boot is seen
/// (the ACPI button exists once the `button` and `evdev` modules loaded;
/// its device node may take a moment to appear).
pub fn start() {
    let deadline = std::time::Instant::now() + Duration::from_millis(200);
    loop {
        let devices: Vec<std::path::PathBuf> = std::fs::read_dir("/dev/input")
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("event"))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        if !devices.is_empty() || std::time::Instant::now() >= deadline {
            for path in devices {
                if let Ok(dev) = std::fs::File::open(&path) {
                    std::thread::spawn(move || watch(dev));
                }
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ty: u16, code: u16, value: i32) -> [u8; EVENT_SIZE] {
        let mut ev = [0u8; EVENT_SIZE];
        ev[16..18].copy_from_slice(&ty.to_ne_bytes());
        ev[18..20].copy_from_slice(&code.to_ne_bytes());
        ev[20..24].copy_from_slice(&value.to_ne_bytes());
        ev
    }

    #[test]
    fn only_the_power_key_going_down_counts() {
        assert!(is_power_press(&event(EV_KEY, KEY_POWER, 1)));
        assert!(!is_power_press(&event(EV_KEY, KEY_POWER, 0)));
        assert!(!is_power_press(&event(EV_KEY, 30, 1)));
        assert!(!is_power_press(&event(0, KEY_POWER, 1)));
    }
}
