//! Option tables from Lua, parsed into typed structs. Unknown keys are
//! rejected with a message naming the key and the accepted ones, so a typo
//! never silently does nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use mlua::{Lua, Table, Value};
use provium_protocol::ExecRequest;

use super::errors::raise;
use crate::units;
use crate::vm::BootOpts;

/// Fails on any key of `t` not in `known`.
pub fn check_keys(lua: &Lua, what: &str, t: &Table, known: &[&str]) -> mlua::Result<()> {
    for pair in t.clone().pairs::<Value, Value>() {
        let (k, _) = pair?;
        let name = match &k {
            Value::String(s) => s.to_string_lossy(),
            other => format!("{other:?}"),
        };
        if !known.contains(&name.as_str()) {
            return Err(raise(lua, format!("{what}: unknown option `{name}` (known: {})", known.join(", "))));
        }
    }
    Ok(())
}

/// A duration: number of seconds, or a string like `"250ms"`, `"5s"`.
pub fn duration(lua: &Lua, what: &str, v: &Value) -> mlua::Result<Duration> {
    let bad = |shown: String| {
        raise(
            lua,
            format!("{what}: must be a finite, non-negative number of seconds or a string like \"5s\" (got {shown})"),
        )
    };
    match v {
        Value::Integer(n) => units::seconds(*n as f64).ok_or_else(|| bad(n.to_string())),
        Value::Number(n) => units::seconds(*n).ok_or_else(|| bad(n.to_string())),
        Value::String(s) => {
            let text = s.to_string_lossy();
            units::parse_duration(&text).map_err(|_| bad(format!("`{text}`")))
        }
        other => Err(bad(other.type_name().to_string())),
    }
}

/// A size: bytes, or a string like `"512M"`.
pub fn size(lua: &Lua, what: &str, v: &Value) -> mlua::Result<u64> {
    match v {
        Value::Integer(n) if *n > 0 => Ok(*n as u64),
        Value::String(s) => units::parse_size(&s.to_string_lossy()).map_err(|e| raise(lua, format!("{what}: {e}"))),
        other => {
            Err(raise(lua, format!("{what}: expected bytes or a string like \"512M\", got {}", other.type_name())))
        }
    }
}

const BOOT_KEYS: &[&str] = &[
    "memory",
    "cpus",
    "kernel_cmdline",
    "kernel_cmdline_append",
    "agent_timeout",
    "rng_seed",
    "initial_time",
    "files",
    "nics",
    "disks",
];

/// `disks = {{id=, size=, image= (or path=), format=, readonly=}, …}`.
fn boot_disks(lua: &Lua, what: &str, t: &Table) -> mlua::Result<Vec<crate::config::DiskDecl>> {
    let mut out = Vec::new();
    for (i, entry) in t.sequence_values::<Table>().enumerate() {
        let w = format!("{what}: disks[{}]", i + 1);
        let e = entry.map_err(|_| raise(lua, format!("{what}: disks must be a list of {{id, size, image}} tables")))?;
        check_keys(lua, &w, &e, &["id", "size", "image", "path", "format", "readonly", "mediated"])?;
        let size = match super::args::field::<Option<Value>>(lua, &w, &e, "size")? {
            Some(v) => Some(size(lua, &format!("{w}: size"), &v)?),
            None => None,
        };
        let image: Option<String> = super::args::field(lua, &w, &e, "image")?;
        let path: Option<String> = super::args::field(lua, &w, &e, "path")?;
        if image.is_some() && path.is_some() {
            return Err(raise(lua, format!("{w}: give `image` or `path` (the same thing), not both")));
        }
        let decl = crate::config::DiskDecl::new(
            super::args::field(lua, &w, &e, "id")?,
            image.or(path).map(std::path::PathBuf::from),
            size,
            super::args::field::<Option<String>>(lua, &w, &e, "format")?.as_deref(),
            super::args::field::<Option<bool>>(lua, &w, &e, "readonly")?.unwrap_or(false),
            super::args::field(lua, &w, &e, "mediated")?,
        );
        out.push(decl.map_err(|m| raise(lua, format!("{w}: {m}")))?);
    }
    Ok(out)
}

/// `files = {{path=, content=, mode=}, …}`: absolute paths without `.`/`..`.
fn boot_files(lua: &Lua, what: &str, t: &Table) -> mlua::Result<Vec<(String, Vec<u8>, u32)>> {
    let mut out = Vec::new();
    for entry in t.clone().sequence_values::<Table>() {
        let e = entry.map_err(|_| raise(lua, format!("{what}: files must be a list of {{path, content[, mode]}}")))?;
        check_keys(lua, &format!("{what}: files"), &e, &["path", "content", "mode"])?;
        let path: String = super::args::field::<Option<String>>(lua, what, &e, "path")?
            .ok_or_else(|| raise(lua, format!("{what}: files: entry without `path`")))?;
        let bad = path.is_empty() || !path.starts_with('/') || path.split('/').any(|c| c == "." || c == "..");
        if bad {
            return Err(raise(lua, format!("{what}: files: path `{path}` must be absolute, without `.` or `..`")));
        }
        let content = super::args::field::<Option<mlua::String>>(lua, what, &e, "content")?
            .map(|s| s.as_bytes().to_vec())
            .unwrap_or_default();
        let mode = super::args::field::<Option<u32>>(lua, what, &e, "mode")?.unwrap_or(0o644);
        if mode > 0o7777 {
            return Err(raise(lua, format!("{what}: files: mode of `{path}` must be at most 0o7777 (4095)")));
        }
        out.push((path, content, mode));
    }
    Ok(out)
}

/// Parses boot options (`provium:vm(n, p, opts)` and `vm:boot(opts)`).
pub fn boot_opts(lua: &Lua, what: &str, t: Option<Table>) -> mlua::Result<BootOpts> {
    let Some(t) = t else {
        return Ok(BootOpts::default());
    };
    check_keys(lua, what, &t, BOOT_KEYS)?;
    let mut o = BootOpts::default();
    if let Some(v) = super::args::field::<Option<Value>>(lua, what, &t, "memory")? {
        o.memory = Some(size(lua, &format!("{what}: memory"), &v)?);
    }
    if let Some(v) = super::args::field::<Option<Value>>(lua, what, &t, "cpus")? {
        match v {
            Value::Integer(n) if (1..=256).contains(&n) => o.cpus = Some(n as u32),
            other => return Err(raise(lua, format!("{what}: cpus must be an integer from 1 to 256, got {other:?}"))),
        }
    }
    o.kernel_cmdline = super::args::field::<Option<String>>(lua, what, &t, "kernel_cmdline")?;
    o.kernel_cmdline_append = super::args::field::<Option<String>>(lua, what, &t, "kernel_cmdline_append")?;
    if let Some(v) = super::args::field::<Option<Value>>(lua, what, &t, "agent_timeout")? {
        o.agent_timeout = Some(duration(lua, &format!("{what}: agent_timeout"), &v)?);
    }
    if let Some(v) = super::args::field::<Option<Value>>(lua, what, &t, "rng_seed")? {
        match v {
            Value::Integer(n) => o.rng_seed = Some(n as u64),
            other => return Err(raise(lua, format!("{what}: rng_seed must be an integer, got {}", other.type_name()))),
        }
    }
    if let Some(v) = super::args::field::<Option<Value>>(lua, what, &t, "initial_time")? {
        let secs = match v {
            Value::Integer(n) => n as f64,
            Value::Number(f) if f.is_finite() => f,
            _ => {
                return Err(raise(
                    lua,
                    format!("{what}: initial_time must be a finite number of seconds since the epoch"),
                ))
            }
        };
        o.initial_time = Some(secs);
    }
    if let Some(v) = super::args::field::<Option<Value>>(lua, what, &t, "nics")? {
        match v {
            Value::Integer(n) if (0..=16).contains(&n) => o.nics = Some(n as u8),
            other => return Err(raise(lua, format!("{what}: nics must be an integer from 0 to 16, got {other:?}"))),
        }
    }
    if let Some(files) = super::args::field::<Option<Table>>(lua, what, &t, "files")? {
        o.files = Some(boot_files(lua, what, &files)?);
    }
    if let Some(disks) = super::args::field::<Option<Table>>(lua, what, &t, "disks")? {
        o.disks = Some(boot_disks(lua, what, &disks)?);
    }
    Ok(o)
}

const RUN_KEYS: &[&str] = &["env", "env_clear", "cwd", "stdin", "timeout", "timeout_ms", "args"];

/// Is this second argument of `vm:run` an options table (rather than an
/// argument list)?
fn is_opts_table(t: &Table) -> mlua::Result<bool> {
    for k in RUN_KEYS {
        if !t.get::<Value>(*k)?.is_nil() {
            return Ok(true);
        }
    }
    Ok(false)
}

fn strings(lua: &Lua, what: &str, t: &Table) -> mlua::Result<Vec<String>> {
    let mut out = Vec::new();
    for v in t.clone().sequence_values::<Value>() {
        match v? {
            Value::String(s) => out.push(s.to_string_lossy()),
            Value::Integer(n) => out.push(n.to_string()),
            Value::Number(n) => out.push(n.to_string()),
            other => return Err(raise(lua, format!("{what}: arguments must be strings, got {}", other.type_name()))),
        }
    }
    Ok(out)
}

/// What `vm:run` asks for: the request and the bytes for stdin.
#[derive(Debug)]
pub struct RunSpec {
    pub req: ExecRequest,
    pub stdin: Vec<u8>,
}

/// Builds the exec request for `vm:run(cmd)`, `vm:run(cmd, {args…})` and
/// `vm:run(cmd, opts)`.
pub fn run_request(lua: &Lua, what: &str, cmd: &str, second: Option<Value>) -> mlua::Result<RunSpec> {
    // By absolute path: `env_clear` (or an `env` without PATH) must not make
    // the shell itself unfindable.
    let shell = |cmd: &str| vec!["/bin/sh".to_string(), "-c".to_string(), cmd.to_string()];
    let t = match second {
        None | Some(Value::Nil) => {
            return Ok(RunSpec { req: ExecRequest { argv: shell(cmd), ..Default::default() }, stdin: vec![] })
        }
        Some(Value::Table(t)) => t,
        Some(other) => {
            return Err(raise(lua, format!("{what}: second argument must be a table, got {}", other.type_name())))
        }
    };
    if !is_opts_table(&t)? {
        let mut argv = vec![cmd.to_string()];
        argv.extend(strings(lua, what, &t)?);
        return Ok(RunSpec { req: ExecRequest { argv, ..Default::default() }, stdin: vec![] });
    }
    check_keys(lua, what, &t, RUN_KEYS)?;
    let argv = match super::args::field::<Option<Table>>(lua, what, &t, "args")? {
        Some(args) => {
            let mut argv = vec![cmd.to_string()];
            argv.extend(strings(lua, &format!("{what}: args"), &args)?);
            argv
        }
        None => shell(cmd),
    };
    let mut req = ExecRequest { argv, ..Default::default() };
    if let Some(env) = super::args::field::<Option<Table>>(lua, what, &t, "env")? {
        let mut map = BTreeMap::new();
        for pair in env.pairs::<Value, Value>() {
            let (k, v) = pair?;
            let k = match k {
                Value::String(s) => s.to_string_lossy(),
                other => {
                    return Err(raise(lua, format!("{what}: env keys must be strings, got {}", other.type_name())))
                }
            };
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(raise(lua, format!("{what}: env key {k:?} must be non-empty, without `=` or NUL")));
            }
            let v = match v {
                Value::String(s) => s.to_string_lossy(),
                Value::Integer(n) => n.to_string(),
                Value::Number(n) => n.to_string(),
                Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(raise(lua, format!("{what}: env.{k} must be a string, got {}", other.type_name())))
                }
            };
            if v.contains('\0') {
                return Err(raise(lua, format!("{what}: env.{k} may not contain a NUL byte")));
            }
            map.insert(k, v);
        }
        req.env = map;
    }
    req.env_clear = super::args::field::<Option<bool>>(lua, what, &t, "env_clear")?.unwrap_or(false);
    req.cwd = super::args::field::<Option<String>>(lua, what, &t, "cwd")?;
    let stdin = super::args::field::<Option<mlua::String>>(lua, what, &t, "stdin")?
        .map(|s| s.as_bytes().to_vec())
        .unwrap_or_default();
    if let Some(v) = super::args::field::<Option<Value>>(lua, what, &t, "timeout")? {
        req.timeout_ms = Some(duration(lua, &format!("{what}: timeout"), &v)?.as_millis() as u64);
    }
    if let Some(ms) = super::args::field::<Option<i64>>(lua, what, &t, "timeout_ms")? {
        if ms < 0 {
            return Err(raise(lua, format!("{what}: timeout_ms must be non-negative, got {ms}")));
        }
        req.timeout_ms = Some(ms as u64);
    }
    Ok(RunSpec { req, stdin })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(lua: &Lua, src: &str) -> Table {
        lua.load(src).eval().unwrap()
    }

    fn err(r: mlua::Result<impl std::fmt::Debug>) -> String {
        super::super::errors::message(&r.unwrap_err())
    }

    #[test]
    fn boot_options_parse_into_the_struct_and_unknown_keys_are_named() {
        let lua = Lua::new();
        let o =
            boot_opts(&lua, "vm:boot", Some(table(&lua, "return {memory = '1G', cpus = 2, rng_seed = 7}"))).unwrap();
        assert_eq!((o.memory, o.cpus, o.rng_seed), (Some(1 << 30), Some(2), Some(7)));
        let files = "return {files = {{path = '/etc/x', content = 'hi', mode = 384}}}";
        let o = boot_opts(&lua, "vm:boot", Some(table(&lua, files))).unwrap();
        assert_eq!(o.files, Some(vec![("/etc/x".to_string(), b"hi".to_vec(), 0o600)]));
        let e = err(boot_opts(&lua, "vm:boot", Some(table(&lua, "return {memroy = 1}"))));
        assert!(e.contains("vm:boot: unknown option `memroy`") && e.contains("memory, cpus"), "{e}");
        let e = err(boot_opts(&lua, "vm:boot", Some(table(&lua, "return {cpus = 0}"))));
        assert!(e.contains("cpus must be an integer from 1 to 256"), "{e}");
        let e = err(boot_opts(&lua, "vm:boot", Some(table(&lua, "return {files = {{path = 'rel'}}}"))));
        assert!(e.contains("path `rel` must be absolute"), "{e}");
        assert_eq!(boot_opts(&lua, "vm:boot", None).unwrap(), BootOpts::default());
    }

    #[test]
    fn run_takes_a_shell_line_an_argument_list_or_options() {
        let lua = Lua::new();
        let shell = run_request(&lua, "vm:run", "echo hi", None).unwrap();
        assert_eq!(shell.req.argv, ["/bin/sh", "-c", "echo hi"]);
        let args = run_request(&lua, "vm:run", "ls", Some(Value::Table(table(&lua, "return {'-l', 3}")))).unwrap();
        assert_eq!(args.req.argv, ["ls", "-l", "3"]);
        let o = "return {env = {A = 1}, cwd = '/tmp', stdin = 'x', timeout = '2s'}";
        let spec = run_request(&lua, "vm:run", "cat", Some(Value::Table(table(&lua, o)))).unwrap();
        assert_eq!(spec.req.argv, ["/bin/sh", "-c", "cat"]);
        assert_eq!(spec.req.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(
            (spec.req.cwd.as_deref(), spec.req.timeout_ms, spec.stdin),
            (Some("/tmp"), Some(2000), b"x".to_vec())
        );
        let e = err(run_request(&lua, "vm:run", "x", Some(Value::Table(table(&lua, "return {stdin = 'a', cdw = 1}")))));
        assert!(e.contains("vm:run: unknown option `cdw`"), "{e}");
        let e = err(run_request(&lua, "vm:run", "x", Some(Value::Boolean(true))));
        assert!(e.contains("second argument must be a table, got boolean"), "{e}");
    }
}
