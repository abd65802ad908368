//! Starting a child the way both [`crate::exec`] and [`crate::proc`] do:
//! the program found through `PATH` like a shell would, the request's
//! environment and directory, a process group of its own, and registration
//! with [`crate::reaper`] under its lock so the exit status cannot be lost.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use provium_protocol::{ExecRequest, OpError};

use crate::reaper;
use crate::sys::os_error;

/// Finds `prog` the way a shell would, so that a missing command becomes
/// exit status 127 (like `sh`) instead of an error.
fn resolve(prog: &str, env_path: Option<&str>) -> Result<String, (i32, String)> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if prog.contains('/') {
        return match executable(Path::new(prog)) {
            Ok(true) => Ok(prog.to_string()),
            Ok(false) => Err((126, format!("{prog}: permission denied"))),
            Err(_) => Err((127, format!("{prog}: not found"))),
        };
    }
    let path = env_path.map(str::to_string).or_else(|| std::env::var("PATH").ok()).unwrap_or_default();
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let cand = Path::new(dir).join(prog);
        if let Ok(true) = executable(&cand) {
            return Ok(cand.to_string_lossy().into_owned());
        }
    }
    Err((127, format!("{prog}: command not found")))
}

/// The `PATH` the command of `req` sees: its own, the agent's unless the
/// environment is cleared, else none.
pub fn search_path(req: &ExecRequest) -> String {
    match req.env.get("PATH") {
        Some(p) => p.clone(),
        None if req.env_clear => String::new(),
        None => std::env::var("PATH").unwrap_or_default(),
    }
}

/// Why a command cannot start: the shell's exit status for it (127: not
/// found, 126: not executable) and what to say.
pub struct Unrunnable {
    pub code: i32,
    pub message: String,
}

/// Builds the command for `req` (argv resolved through `PATH` like a shell,
/// env, cwd, own process group; stdio left to the caller). `req.argv` must
/// not be empty.
pub fn command(req: &ExecRequest) -> Result<Command, Unrunnable> {
    let prog = &req.argv[0];
    let resolved = resolve(prog, Some(&search_path(req))).map_err(|(code, message)| Unrunnable { code, message })?;
    if let Some(interp) = crate::elf::missing_interpreter(Path::new(&resolved)) {
        return Err(Unrunnable { code: 127, message: crate::elf::explain(&resolved, &interp) });
    }
    let mut cmd = Command::new(&resolved);
    cmd.arg0(prog).args(&req.argv[1..]).process_group(0);
    if req.env_clear {
        cmd.env_clear();
    }
    cmd.envs(&req.env);
    if let Some(cwd) = &req.cwd {
        cmd.current_dir(cwd);
    }
    Ok(cmd)
}

/// Spawns `cmd` with stdout/stderr piped (stdin piped when `stdin`, else
/// `/dev/null`) and registers it with the reaper under one lock, so its exit
/// status cannot be reaped before someone waits for it.
pub fn spawn_registered(
    cmd: &mut Command,
    prog: &str,
    stdin: bool,
) -> Result<(std::process::Child, i32, Arc<reaper::ExitSlot>), OpError> {
    cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut reg = reaper::lock();
    let child = cmd.spawn().map_err(|e| os_error(&format!("spawn `{prog}`"), e))?;
    let pid = child.id() as i32;
    let slot = reg.insert(pid);
    Ok((child, pid, slot))
}
