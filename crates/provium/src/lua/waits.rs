//! Waiting without sleeps: `wait_until` (global and `vm:`), daemons that are
//! started and awaited until ready, the NixOS-driver conveniences, and
//! `polling_condition` invariants.
//!
//! Port and file waits run in the agent, which watches and answers within
//! milliseconds; every wait has a bounded timeout and its error says what it
//! waited for and for how long.

use std::time::{Duration, Instant};

use mlua::{Function, Lua, MultiValue, RegistryKey, Table, UserDataMethods, Value};
use provium_protocol::ExecOutput;

use super::errors::{message, raise, LuaResultExt};
use super::opts;
use super::proc_ud::ProcUd;
use super::vm_ud::VmUd;
use crate::sync::lock;
use crate::vm::VmRef;

/// Default bound of the NixOS-style waits.
const WAIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default bound of `vm:daemon` readiness.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(10);
/// How often command-based waits retry.
const RETRY: Duration = Duration::from_millis(100);
/// The slice a daemon's readiness wait gives the agent before checking
/// whether the daemon has died.
const SLICE: Duration = Duration::from_millis(100);

fn truthy(v: &Value) -> bool {
    !matches!(v, Value::Nil | Value::Boolean(false))
}

fn dur(lua: &Lua, what: &str, v: Option<Value>, default: Duration) -> mlua::Result<Duration> {
    match v {
        None | Some(Value::Nil) => Ok(default),
        Some(v) => opts::duration(lua, what, &v),
    }
}

/// `wait_until(fn, {timeout, interval, desc})`: calls `fn` until it returns
/// a truthy value, which is returned. An error inside `fn` propagates.
fn wait_until(lua: &Lua, what: &str, f: Function, o: Option<Table>, interval: Duration) -> mlua::Result<Value> {
    let (timeout, interval, desc) = match &o {
        Some(t) => {
            opts::check_keys(lua, what, t, &["timeout", "interval", "desc"])?;
            (
                dur(lua, what, t.get("timeout")?, Duration::from_secs(10))?,
                dur(lua, what, t.get("interval")?, interval)?,
                super::args::field::<Option<String>>(lua, what, t, "desc")?.unwrap_or_else(|| "condition".into()),
            )
        }
        None => (Duration::from_secs(10), interval, "condition".to_string()),
    };
    let deadline = Instant::now() + timeout;
    loop {
        check_conditions(lua)?;
        let v: Value = f.call(())?;
        if truthy(&v) {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(raise(lua, format!("wait_until: {desc} not met within {}s", timeout.as_secs_f64())));
        }
        std::thread::sleep(interval.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// An invariant checked before guest operations while it is active.
struct Condition {
    id: u64,
    check: RegistryKey,
    desc: String,
    interval: Duration,
    last: Option<Instant>,
}

#[derive(Default)]
struct Conditions {
    active: Vec<Condition>,
    next_id: u64,
    /// Set while checks run: a check's own guest operations do not check.
    checking: bool,
}

/// Runs every active `polling_condition` whose interval has passed; fails
/// with the condition's description when one does not hold.
pub fn check_conditions(lua: &Lua) -> mlua::Result<()> {
    let due: Vec<(u64, Function, String)> = {
        let Some(mut c) = lua.app_data_mut::<Conditions>() else { return Ok(()) };
        if c.checking {
            return Ok(());
        }
        let now = Instant::now();
        let mut due = Vec::new();
        for cond in c.active.iter_mut() {
            if cond.last.is_none_or(|l| now.duration_since(l) >= cond.interval) {
                cond.last = Some(now);
                due.push((cond.id, lua.registry_value(&cond.check)?, cond.desc.clone()));
            }
        }
        due
    };
    let set_checking = |on: bool| {
        if let Some(mut c) = lua.app_data_mut::<Conditions>() {
            c.checking = on;
        }
    };
    set_checking(true);
    let mut verdict = Ok(());
    for (_, f, desc) in due {
        match f.call::<Value>(()) {
            Ok(v) if truthy(&v) => {}
            Ok(_) => verdict = Err(raise(lua, format!("polling condition failed: {desc}"))),
            Err(e) => verdict = Err(raise(lua, format!("polling condition failed: {desc}: {}", message(&e)))),
        }
        if verdict.is_err() {
            break;
        }
    }
    set_checking(false);
    verdict
}

fn remove_condition(lua: &Lua, id: u64) {
    if let Some(mut c) = lua.app_data_mut::<Conditions>() {
        c.active.retain(|c| c.id != id);
    }
}

/// `polling_condition(check, [opts,] [body])`: with a body, `check` must hold
/// before every guest operation while the body runs, and the body's results
/// are returned; without, the condition stays active until `:stop()`.
fn polling_condition(lua: &Lua, args: MultiValue) -> mlua::Result<MultiValue> {
    let args: Vec<Value> = args.into_iter().collect();
    let (check, o, body) = match args.as_slice() {
        [Value::Function(c)] => (c.clone(), None, None),
        [Value::Function(c), Value::Function(b)] => (c.clone(), None, Some(b.clone())),
        [Value::Function(c), Value::Table(t)] => (c.clone(), Some(t.clone()), None),
        [Value::Function(c), Value::Table(t), Value::Function(b)] => (c.clone(), Some(t.clone()), Some(b.clone())),
        _ => return Err(raise(lua, "polling_condition(check, [{interval, desc},] [body]): bad arguments")),
    };
    let (interval, desc) = match &o {
        Some(t) => {
            opts::check_keys(lua, "polling_condition", t, &["interval", "desc"])?;
            (
                dur(lua, "polling_condition", t.get("interval")?, Duration::ZERO)?,
                super::args::field::<Option<String>>(lua, "polling_condition", t, "desc")?,
            )
        }
        None => (Duration::ZERO, None),
    };
    let id = {
        let mut c = lua.app_data_mut::<Conditions>().expect("conditions installed");
        c.next_id += 1;
        let id = c.next_id;
        let check = lua.create_registry_value(check)?;
        c.active.push(Condition { id, check, desc: desc.unwrap_or_else(|| "condition".into()), interval, last: None });
        id
    };
    match body {
        Some(b) => {
            let r = b.call::<MultiValue>(());
            remove_condition(lua, id);
            r
        }
        None => {
            let handle = lua.create_table()?;
            let stop = lua.create_function(move |lua, _: MultiValue| {
                remove_condition(lua, id);
                Ok(())
            })?;
            handle.set("stop", stop)?;
            Ok(MultiValue::from_vec(vec![Value::Table(handle)]))
        }
    }
}

pub fn install(lua: &Lua) -> mlua::Result<()> {
    lua.set_app_data(Conditions::default());
    let g = lua.globals();
    g.set(
        "wait_until",
        lua.create_function(|lua, (f, o): (Function, Option<Table>)| wait_until(lua, "wait_until", f, o, RETRY))?,
    )?;
    g.set("polling_condition", lua.create_function(polling_condition)?)?;
    // Host wall-clock helpers (seconds, fractional): what wait_until uses.
    let epoch = std::time::Instant::now();
    g.set("_provium_now", lua.create_function(move |_, ()| Ok(epoch.elapsed().as_secs_f64()))?)?;
    g.set(
        "_provium_sleep",
        lua.create_function(|lua, secs: Value| {
            std::thread::sleep(opts::duration(lua, "_provium_sleep", &secs)?);
            Ok(())
        })?,
    )?;
    Ok(())
}

/// Drops conditions left active by a test.
pub fn clear_conditions(lua: &Lua) {
    if let Some(mut c) = lua.app_data_mut::<Conditions>() {
        c.active.clear();
    }
}

fn shell(lua: &Lua, vm: &VmRef, cmd: &str) -> mlua::Result<ExecOutput> {
    check_conditions(lua)?;
    let spec = opts::run_request(lua, "vm:run", cmd, None)?;
    lock(vm).exec(spec.req, &spec.stdin).lua(lua)
}

fn describe(cmd: &str, out: &ExecOutput) -> String {
    let r = super::result_ud::RunResult { command: cmd.to_string(), out: out.clone() };
    r.failure_message()
}

fn ok(out: &ExecOutput) -> bool {
    out.status == provium_protocol::ExitStatus::Exited(0)
}

/// Retries `cmd` until its success matches `want`.
fn retry_command(
    lua: &Lua,
    vm: &VmRef,
    what: &str,
    cmd: &str,
    want: bool,
    timeout: Duration,
) -> mlua::Result<mlua::String> {
    let deadline = Instant::now() + timeout;
    loop {
        let out = shell(lua, vm, cmd)?;
        if ok(&out) == want {
            return lua.create_string(&out.stdout);
        }
        if Instant::now() >= deadline {
            let last = describe(cmd, &out);
            return Err(raise(
                lua,
                format!(
                    "{what}: `{cmd}` did not {} within {timeout:?}; last try: {last}",
                    if want { "succeed" } else { "fail" }
                ),
            ));
        }
        std::thread::sleep(RETRY);
    }
}

/// A wait the agent does; `VmError::TimedOut` keeps its message.
fn agent_wait(
    lua: &Lua,
    vm: &VmRef,
    op: &'static str,
    f: impl FnOnce(&crate::agent::AgentClient) -> Result<(), crate::agent::AgentError>,
) -> mlua::Result<()> {
    check_conditions(lua)?;
    lock(vm).with_agent(op, f).lua(lua)
}

/// What a daemon is ready on.
enum Readiness {
    Port(u16),
    File(String),
    Log(String),
    Func(Function),
    Started,
}

impl Readiness {
    fn describe(&self) -> String {
        match self {
            Readiness::Port(p) => format!("TCP port {p} to listen"),
            Readiness::File(f) => format!("`{f}` to exist"),
            Readiness::Log(l) => format!("`{l}` in its output"),
            Readiness::Func(_) => "its readiness function".into(),
            Readiness::Started => "it to start".into(),
        }
    }
}

fn daemon(lua: &Lua, vm: &VmRef, cmd: &str, o: Option<Table>) -> mlua::Result<ProcUd> {
    let o = o.unwrap_or(lua.create_table()?);
    opts::check_keys(lua, "vm:daemon", &o, &["port", "log", "file", "ready", "env", "timeout", "cwd"])?;
    let timeout = dur(lua, "vm:daemon", o.get("timeout")?, DAEMON_TIMEOUT)?;
    let ready = if let Some(p) = super::args::field::<Option<u16>>(lua, "vm:daemon", &o, "port")? {
        Readiness::Port(p)
    } else if let Some(f) = super::args::field::<Option<String>>(lua, "vm:daemon", &o, "file")? {
        Readiness::File(f)
    } else if let Some(l) = super::args::field::<Option<String>>(lua, "vm:daemon", &o, "log")? {
        Readiness::Log(l)
    } else if let Some(f) = super::args::field::<Option<Function>>(lua, "vm:daemon", &o, "ready")? {
        Readiness::Func(f)
    } else {
        Readiness::Started
    };
    let run_opts = lua.create_table()?;
    run_opts.set("env", o.get::<Value>("env")?)?;
    run_opts.set("cwd", o.get::<Value>("cwd")?)?;
    // An empty table would read as an (empty) argument list: no shell.
    let run_opts = if run_opts.is_empty() { None } else { Some(Value::Table(run_opts)) };
    let proc = super::vm_streams::spawn(lua, vm, "vm:daemon", cmd, run_opts)?;
    let deadline = Instant::now() + timeout;
    // On a readiness timeout the process keeps running, owned by the scope
    // (which stops it when the test ends); the error quotes its output.
    let fail = |lua: &Lua, proc: &ProcUd, why: String| -> mlua::Error {
        let pid = proc.0.pid();
        let output = proc.0.poll().ok().map(|s| {
            format!(
                "\nstdout so far: {:?}\nstderr so far: {:?}",
                String::from_utf8_lossy(&s.stdout),
                String::from_utf8_lossy(&s.stderr)
            )
        });
        let output = output.unwrap_or_default();
        raise(lua, format!("vm:daemon `{cmd}`: {why}; it still runs (pid {pid}) until its scope ends{output}"))
    };
    loop {
        let st = proc.0.poll().lua(lua)?;
        // Ready even if it has exited since: it only had to start, or its
        // awaited output is there.
        match &ready {
            Readiness::Started => return Ok(proc),
            Readiness::Log(l) if contains(&st.stdout, l) || contains(&st.stderr, l) => return Ok(proc),
            _ => {}
        }
        if st.status.is_some() {
            let r = super::proc_ud::run_result(cmd, &st);
            let waited = ready.describe();
            return Err(raise(
                lua,
                format!("vm:daemon `{cmd}` exited before it was ready (waiting for {waited}): {}", r.failure_message()),
            ));
        }
        let slice = SLICE.min(deadline.saturating_duration_since(Instant::now()));
        let awaited = match &ready {
            Readiness::Port(p) => Some(agent_wait(lua, vm, "daemon", |a| a.wait_port(*p, true, slice))),
            Readiness::File(f) => Some(agent_wait(lua, vm, "daemon", |a| a.wait_path(f, true, slice))),
            Readiness::Log(_) => {
                // Returns as soon as the process exits, else after 20 ms.
                proc.0.wait(Some(Duration::from_millis(20)), false).lua(lua)?;
                None
            }
            Readiness::Func(f) => {
                if truthy(&f.call::<Value>(())?) {
                    return Ok(proc);
                }
                std::thread::sleep(RETRY.min(slice));
                None
            }
            Readiness::Started => unreachable!("returned above"),
        };
        match awaited {
            Some(Ok(())) => return Ok(proc),
            Some(Err(e)) if Instant::now() >= deadline => {
                return Err(fail(lua, &proc, format!("not ready after {timeout:?}: {}", message(&e))))
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            let why = match &ready {
                Readiness::Log(l) => format!("`{l}` did not appear in its output within {timeout:?}"),
                other => format!("gave up waiting for {} after {timeout:?}", other.describe()),
            };
            return Err(fail(lua, &proc, why));
        }
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len().max(1)).any(|w| w == needle.as_bytes())
}

pub fn add_methods<M: UserDataMethods<VmUd>>(methods: &mut M) {
    methods.add_method("wait_until", |lua, _, (f, o): (Function, Option<Table>)| {
        wait_until(lua, "vm:wait_until", f, o, Duration::from_millis(500))
    });
    methods.add_method("daemon", |lua, this, (cmd, o): (String, Option<Table>)| daemon(lua, &this.0, &cmd, o));
    methods.add_method("succeed", |lua, this, cmd: String| {
        let out = shell(lua, &this.0, &cmd)?;
        if ok(&out) {
            lua.create_string(&out.stdout)
        } else {
            Err(raise(lua, format!("vm:succeed: {}", describe(&cmd, &out))))
        }
    });
    methods.add_method("fail", |lua, this, cmd: String| {
        let out = shell(lua, &this.0, &cmd)?;
        if ok(&out) {
            Err(raise(
                lua,
                format!(
                    "vm:fail: command `{cmd}` unexpectedly succeeded; stdout={:?}",
                    String::from_utf8_lossy(&out.stdout)
                ),
            ))
        } else {
            lua.create_string(&out.stdout)
        }
    });
    methods.add_method("wait_until_succeeds", |lua, this, (cmd, t): (String, Option<Value>)| {
        let timeout = dur(lua, "vm:wait_until_succeeds", t, WAIT_TIMEOUT)?;
        retry_command(lua, &this.0, "vm:wait_until_succeeds", &cmd, true, timeout)
    });
    methods.add_method("wait_until_fails", |lua, this, (cmd, t): (String, Option<Value>)| {
        let timeout = dur(lua, "vm:wait_until_fails", t, WAIT_TIMEOUT)?;
        retry_command(lua, &this.0, "vm:wait_until_fails", &cmd, false, timeout)
    });
    for (name, open) in [("wait_for_open_port", true), ("wait_for_closed_port", false)] {
        methods.add_method(name, move |lua, this, (port, o): (u16, Option<Value>)| {
            let timeout = match o {
                Some(Value::Table(t)) => {
                    opts::check_keys(lua, name, &t, &["timeout"])?;
                    dur(lua, name, t.get("timeout")?, WAIT_TIMEOUT)?
                }
                other => dur(lua, name, other, WAIT_TIMEOUT)?,
            };
            agent_wait(lua, &this.0, "wait_for_port", |a| a.wait_port(port, open, timeout))
        });
    }
    methods.add_method("wait_for_file", |lua, this, (path, t): (String, Option<Value>)| {
        let timeout = dur(lua, "vm:wait_for_file", t, WAIT_TIMEOUT)?;
        agent_wait(lua, &this.0, "wait_for_file", |a| a.wait_path(&path, true, timeout))
    });
    methods.add_method("wait_for_console_text", |lua, this, (pattern, t): (String, Option<Value>)| {
        let timeout = dur(lua, "vm:wait_for_console_text", t, WAIT_TIMEOUT)?;
        let find: Function = lua.globals().get::<Table>("string")?.get("find")?;
        let deadline = Instant::now() + timeout;
        loop {
            let text = lock(&this.0).console_tail(usize::MAX);
            if truthy(&find.call::<Value>((text, pattern.as_str()))?) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(raise(
                    lua,
                    format!("vm:wait_for_console_text: `{pattern}` did not appear on the console within {timeout:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
}
