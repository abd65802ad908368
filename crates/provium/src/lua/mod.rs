//! Running one `*.test.lua` file: its own Lua 5.4 state on the calling
//! thread, the framework and `provium` global installed, the chunk executed
//! once, then each registered test in order with its own VM scope.
//!
//! Submodules are thin adapters: [`framework`] (`test`, `t`), [`lab_ud`]
//! (`provium`), [`vm_ud`] (VM objects), [`result_ud`] (RunResult), [`opts`]
//! (option tables), [`errors`] (error text).

pub mod clock_ud;
pub mod console_ud;
pub mod errors;
pub mod file_ud;
pub mod fixtures;
pub mod framework;
pub mod jobs;
pub mod lab;
pub mod lab_snapshot;
pub mod lab_ud;
pub mod opts;
pub mod proc_ud;
pub mod reset;
pub mod result_ud;
pub mod snapshot_ud;
pub mod stream_ud;
pub mod vm_streams;
pub mod vm_ud;
pub mod waits;

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mlua::{HookTriggers, Lua, Table, VmState as LuaVmState};

use crate::image::Images;
use crate::report::{FileReport, TestReport};
use crate::vmm::Accel;
use framework::{Outcome, TestCtx, TestState};
use lab_ud::FileCtx;

/// How many console lines a failure report quotes per VM.
pub const CONSOLE_EXCERPT_LINES: usize = 20;

/// What a file run needs from the runner.
pub struct FileEnv<'a> {
    pub images: Arc<Images>,
    pub accel: Accel,
    /// The run's fixtures; their roots are also `package.path` roots.
    pub fixtures: Arc<crate::fixture::Fixtures>,
    /// Per-file wall-clock limit.
    pub timeout: Option<Duration>,
    /// Called as each test finishes (for live progress).
    pub on_test: &'a dyn Fn(&TestReport),
}

fn set_package_path(lua: &Lua, file: &Path, roots: &[PathBuf]) -> mlua::Result<()> {
    let package: Table = lua.globals().get("package")?;
    let mut dirs: Vec<PathBuf> = roots.to_vec();
    if let Some(d) = file.parent() {
        dirs.push(if d.as_os_str().is_empty() { PathBuf::from(".") } else { d.to_path_buf() });
    }
    let mut path = String::new();
    for d in dirs {
        path.push_str(&format!("{0}/?.lua;{0}/?/init.lua;", d.display()));
    }
    let old: String = package.get("path")?;
    package.set("path", path + &old)
}

/// Kills every VM of the file when the file's time is up, so that whatever
/// the Lua thread is blocked on returns.
struct Watchdog {
    fired: Arc<AtomicBool>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Arms a watchdog that sets `fired` and kills every VM of the file
    /// when `timeout` passes before the watchdog drops.
    fn start(
        timeout: Option<Duration>,
        kills: Arc<Mutex<Vec<crate::vm::KillSwitch>>>,
        fired: Arc<AtomicBool>,
    ) -> Watchdog {
        let Some(timeout) = timeout else {
            return Watchdog { fired, stop: None, thread: None };
        };
        let (tx, rx) = channel::<()>();
        let f = fired.clone();
        let thread = std::thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(timeout) {
                f.store(true, Ordering::SeqCst);
                for k in kills.lock().unwrap().iter() {
                    k.kill();
                }
            }
        });
        Watchdog { fired, stop: Some(tx), thread: Some(thread) }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn excerpt(lua: &Lua) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, vm) in lab_ud::all_vms(lua) {
        let tail = vm.lock().unwrap_or_else(|p| p.into_inner()).console_tail(crate::vmm::CONSOLE_TAIL_BYTES);
        let lines: Vec<&str> = tail.lines().filter(|l| !l.trim().is_empty()).collect();
        if !lines.is_empty() {
            let start = lines.len().saturating_sub(CONSOLE_EXCERPT_LINES);
            out.push((name, lines[start..].join("\n")));
        }
    }
    out
}

/// A test's time limit: `meta.timeout`, else `provium.timeout`.
fn test_timeout(lua: &Lua, meta: Option<&Table>) -> mlua::Result<Option<Duration>> {
    if let Some(v) = meta.map(|m| m.get::<mlua::Value>("timeout")).transpose()? {
        if !v.is_nil() {
            return opts::duration(lua, "meta.timeout", &v).map(Some);
        }
    }
    Ok(lab_ud::file_config(lua).timeout)
}

/// Installs provium's Lua API into a fresh state for the file at `path`
/// (a test file or a fixture builder).
pub(crate) fn install_api(lua: &Lua, path: &Path, roots: &[PathBuf], ctx: FileCtx) -> mlua::Result<()> {
    set_package_path(lua, path, roots)?;
    framework::install(lua)?;
    jobs::install(lua)?;
    waits::install(lua)?;
    lab_ud::install(lua, ctx)
}

/// Runs one test file to completion and reports how it went.
pub fn run_file(path: &Path, shown: &str, env: &FileEnv) -> FileReport {
    let started = Instant::now();
    let mut report = FileReport::new(shown);
    let kills: Arc<Mutex<Vec<crate::vm::KillSwitch>>> = Arc::default();
    let watchdog = Watchdog::start(env.timeout, kills.clone(), Arc::default());
    let test_fired: Arc<AtomicBool> = Arc::default();
    let lua = Lua::new();
    let setup = (|| -> mlua::Result<()> {
        let ctx = FileCtx {
            images: env.images.clone(),
            accel: env.accel,
            kill_switches: kills.clone(),
            fixtures: env.fixtures.clone(),
        };
        install_api(&lua, path, &env.fixtures.roots, ctx)?;
        let fired = watchdog.fired.clone();
        let test_fired = test_fired.clone();
        let limit = env.timeout.unwrap_or_default();
        lua.set_hook(HookTriggers::new().every_nth_instruction(10_000), move |_, _| {
            if fired.load(Ordering::Relaxed) {
                Err(mlua::Error::RuntimeError(format!("file timeout ({limit:?}) exceeded")))
            } else if test_fired.load(Ordering::Relaxed) {
                Err(mlua::Error::RuntimeError("test timeout exceeded".into()))
            } else {
                Ok(LuaVmState::Continue)
            }
        });
        Ok(())
    })();
    if let Err(e) = setup {
        report.chunk_error = Some(format!("internal error setting up Lua: {}", errors::message(&e)));
        return report;
    }

    let chunk = match std::fs::read(path) {
        Ok(src) => lua.load(src).set_name(format!("@{shown}")).exec(),
        Err(e) => Err(mlua::Error::RuntimeError(format!("cannot read `{shown}`: {e}"))),
    };
    if let Err(e) = chunk {
        report.chunk_error = Some(errors::message(&e));
        report.timed_out = watchdog.fired.load(Ordering::SeqCst);
        lab_ud::end_file_scope(&lua);
        report.duration = started.elapsed();
        return report;
    }

    let baseline = match reset::take_baseline(&lua, shown) {
        Ok(b) => b,
        Err(e) => {
            report.chunk_error = Some(errors::message(&e));
            lab_ud::end_file_scope(&lua);
            report.duration = started.elapsed();
            return report;
        }
    };

    for def in framework::take_tests(&lua) {
        let t0 = Instant::now();
        let meta: Option<Table> = def.meta.as_ref().and_then(|k| lua.registry_value(k).ok());
        let state = Rc::new(std::cell::RefCell::new(TestState { name: def.name.clone(), ..Default::default() }));
        let outcome = if watchdog.fired.load(Ordering::SeqCst) {
            Outcome::Failed(format!("not run: the file timeout ({:?}) was exceeded", env.timeout.unwrap_or_default()))
        } else if let Some(reason) = framework::meta_skip(meta.as_ref()) {
            Outcome::Skipped(reason)
        } else {
            // A bad meta.timeout fails its own test, before the body runs.
            let (limit, bad_meta) = match test_timeout(&lua, meta.as_ref()) {
                Ok(l) => (l, None),
                Err(e) => (None, Some(errors::message(&e))),
            };
            test_fired.store(false, Ordering::SeqCst);
            let test_dog = Watchdog::start(limit, kills.clone(), test_fired.clone());
            let func: mlua::Function = lua.registry_value(&def.func).expect("registered test function");
            let mut outcome = match (bad_meta, lab_ud::begin_test_scope(&lua, &def.name)) {
                (Some(why), _) => Outcome::Failed(format!("test `{}`: {why}", def.name)),
                (None, Ok(())) => framework::run_test(&lua, &func, &TestCtx(state.clone())),
                (None, Err(e)) => Outcome::Failed(errors::message(&e)),
            };
            drop(test_dog);
            if let (true, Outcome::Failed(m)) = (test_fired.load(Ordering::SeqCst), &outcome) {
                outcome = Outcome::Failed(format!(
                    "test timeout exceeded ({:?}); every VM of the file was stopped; op error: {m}",
                    limit.unwrap_or_default()
                ));
            }
            if watchdog.fired.load(Ordering::SeqCst) {
                if let Outcome::Failed(m) = &outcome {
                    outcome = Outcome::Failed(format!(
                        "file timeout ({:?}) exceeded; VMs were stopped\n{m}",
                        env.timeout.unwrap_or_default()
                    ));
                }
            }
            outcome
        };
        let console = match &outcome {
            Outcome::Failed(_) => excerpt(&lua),
            _ => Vec::new(),
        };
        waits::clear_conditions(&lua);
        lab_ud::end_test_scope(&lua);
        // After the file's time is up, no test runs again: nothing to reset.
        if let (Some(b), false) = (&baseline, watchdog.fired.load(Ordering::SeqCst)) {
            reset::restore_baseline(&lua, shown, b);
        }
        let log = std::mem::take(&mut state.borrow_mut().log);
        let t = TestReport { name: def.name, outcome, log, duration: t0.elapsed(), console };
        (env.on_test)(&t);
        report.tests.push(t);
        lua.gc_collect().ok();
    }
    lab_ud::end_file_scope(&lua);
    report.timed_out = watchdog.fired.load(Ordering::SeqCst);
    report.duration = started.elapsed();
    report
}
