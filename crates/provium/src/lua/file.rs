//! [`LuaFile`]: one `*.test.lua` file in its own Lua state, as the runner
//! drives it: run the chunk, hand over the registered tests with their
//! `meta` parsed, run one test body in its scope. When to run what, the
//! watchdogs and the report are the runner's (`crate::runner::file`).

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mlua::{HookTriggers, Lua, RegistryKey, Table, VmState as LuaVmState};

use super::errors::message;
use super::framework::{self, TestCtx, TestState};
use super::lab_ud::{self, FileContext};
use super::{install_api, opts, reset, waits};
use crate::events::{MetaMap, MetaValue, Outcome};
use crate::lab::LabConfig;

/// Flags the runner's watchdogs set; the Lua state checks them every few
/// thousand instructions, so a test spinning in Lua stops too.
#[derive(Clone, Default)]
pub struct Interrupts {
    /// The file's time is up (the message names `file_limit`).
    pub file: Arc<AtomicBool>,
    pub file_limit: Duration,
    /// The running test's time is up.
    pub test: Arc<AtomicBool>,
}

/// A test's `meta` table, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct TestMeta {
    /// `meta.skip`: the reason shown.
    pub skip: Option<String>,
    /// `meta.timeout`: `Ok(None)` when unset; a bad value fails only its
    /// own test.
    pub timeout: Result<Option<Duration>, String>,
    /// The whole table as data (events, tag selection, `console_checks`).
    pub data: MetaMap,
}

/// One registered test.
pub struct LoadedTest {
    pub name: String,
    pub meta: TestMeta,
    /// The `meta` table as written (`t.meta`).
    meta_table: Option<RegistryKey>,
    func: RegistryKey,
}

/// A test file's Lua state with provium's API installed.
pub struct LuaFile {
    lua: Lua,
    path: PathBuf,
    shown: String,
}

impl LuaFile {
    /// A fresh state for the file at `path` (shown as `shown`).
    pub fn new(path: &Path, shown: &str, ctx: FileContext, interrupts: Interrupts) -> Result<LuaFile, String> {
        let lua = Lua::new();
        let roots = ctx.fixtures.roots.clone();
        (|| -> mlua::Result<()> {
            install_api(&lua, path, &roots, ctx)?;
            let limit = interrupts.file_limit;
            lua.set_hook(HookTriggers::new().every_nth_instruction(10_000), move |_, _| {
                if interrupts.file.load(Ordering::Relaxed) {
                    Err(mlua::Error::RuntimeError(format!("file timeout ({limit:?}) exceeded")))
                } else if interrupts.test.load(Ordering::Relaxed) {
                    Err(mlua::Error::RuntimeError("test timeout exceeded".into()))
                } else {
                    Ok(LuaVmState::Continue)
                }
            });
            Ok(())
        })()
        .map_err(|e| format!("internal error setting up Lua: {}", message(&e)))?;
        Ok(LuaFile { lua, path: path.to_path_buf(), shown: shown.to_string() })
    }

    /// Runs the file's top level (which declares VMs and registers tests).
    pub fn run_chunk(&self) -> Result<(), String> {
        let src = std::fs::read(&self.path).map_err(|e| format!("cannot read `{}`: {e}", self.shown))?;
        self.lua.load(src).set_name(format!("@{}", self.shown)).exec().map_err(|e| message(&e))
    }

    /// The file-scope keys the chunk set on `provium`.
    pub fn config(&self) -> LabConfig {
        lab_ud::file_config(&self.lua)
    }

    /// The tests the chunk registered, in order, with their `meta` parsed.
    pub fn take_tests(&self) -> Vec<LoadedTest> {
        let file_todo = framework::file_todo(&self.lua);
        framework::take_tests(&self.lua)
            .into_iter()
            .map(|def| {
                let meta: Option<Table> = def.meta.as_ref().and_then(|k| self.lua.registry_value(k).ok());
                let mut parsed = parse_meta(&self.lua, meta.as_ref());
                if def.todo {
                    parsed.skip = Some(parsed.skip.filter(|s| s.starts_with("todo")).unwrap_or_else(|| "todo".into()));
                }
                if let Some(reason) = &file_todo {
                    parsed.skip = Some(reason.clone());
                }
                LoadedTest { meta: parsed, name: def.name, meta_table: def.meta, func: def.func }
            })
            .collect()
    }

    /// Opens the test's scope (rebinding `provium` to it), runs its body
    /// and classifies how it ended; returns its `t:log` lines too. The
    /// scope stays open until [`LuaFile::end_test`].
    pub fn run_test(&self, test: &LoadedTest) -> (Outcome, Vec<String>) {
        let meta: Option<Table> = test.meta_table.as_ref().and_then(|k| self.lua.registry_value(k).ok());
        let state = Rc::new(std::cell::RefCell::new(TestState { name: test.name.clone(), meta, ..Default::default() }));
        let func: mlua::Function = self.lua.registry_value(&test.func).expect("registered test function");
        let outcome = match lab_ud::begin_test_scope(&self.lua, &test.name) {
            Ok(()) => framework::run_test(&self.lua, &func, &TestCtx(state.clone())),
            Err(e) => Outcome::Failed(message(&e)),
        };
        let log = std::mem::take(&mut state.borrow_mut().log);
        (outcome, log)
    }

    /// The console tails of every VM of the file, for a failure report.
    pub fn console_excerpts(&self, lines: usize) -> Vec<(String, String)> {
        lab_ud::console_excerpts(&self.lua, lines)
    }

    /// Starts every VM's console badness window (a test begins).
    pub fn mark_consoles(&self) {
        lab_ud::mark_consoles(&self.lua)
    }

    /// Kernel reports on the file's consoles since [`LuaFile::mark_consoles`].
    pub fn console_findings(&self) -> Vec<(String, crate::vm::badness::Finding)> {
        lab_ud::console_findings(&self.lua)
    }

    /// Closes the running test's scope (its resources, sub-labs and VMs)
    /// and drops its polling conditions.
    pub fn end_test(&self) {
        waits::clear_conditions(&self.lua);
        lab_ud::end_test_scope(&self.lua);
        self.lua.gc_collect().ok();
    }

    /// `reset_between_tests`: snapshots the root lab, if the file asked.
    pub fn take_baseline(&self) -> Result<Option<PathBuf>, String> {
        reset::take_baseline(&self.lua, &self.shown).map_err(|e| message(&e))
    }

    /// Puts the root lab back to `baseline`.
    pub fn restore_baseline(&self, baseline: &Path) -> Result<(), crate::lab::LabError> {
        reset::restore_baseline(&self.lua, baseline)
    }

    /// Closes every scope; the file is over.
    pub fn end(&self) {
        lab_ud::end_file_scope(&self.lua);
    }
}

/// `meta.skip` and `meta.timeout`.
fn parse_meta(lua: &Lua, meta: Option<&Table>) -> TestMeta {
    let timeout = match meta.map(|m| m.get::<mlua::Value>("timeout")).transpose() {
        Ok(Some(v)) if !v.is_nil() => opts::duration(lua, "meta.timeout", &v).map(Some).map_err(|e| message(&e)),
        Ok(_) => Ok(None),
        Err(e) => Err(message(&e)),
    };
    let data = meta.map(|m| match to_meta(&mlua::Value::Table(m.clone()), 0) {
        MetaValue::Map(map) => map,
        _ => MetaMap::new(),
    });
    TestMeta { skip: framework::meta_skip(meta), timeout, data: data.unwrap_or_default() }
}

/// A Lua value as meta data: a table with a sequence part is an array,
/// any other table a map of its string keys; a string that is not UTF-8 is
/// bytes; functions and userdata are left out (as `nil`). Nesting stops at
/// 16 levels (a table that contains itself).
fn to_meta(v: &mlua::Value, depth: usize) -> MetaValue {
    use mlua::Value as V;
    match v {
        V::Boolean(b) => MetaValue::Bool(*b),
        V::Integer(i) => MetaValue::Int(*i),
        V::Number(n) => MetaValue::Float(*n),
        V::String(s) => match s.to_str() {
            Ok(text) => MetaValue::Str(text.to_string()),
            Err(_) => MetaValue::Bytes(s.as_bytes().to_vec()),
        },
        V::Table(t) if depth < 16 => {
            if t.raw_len() > 0 {
                MetaValue::Array(t.sequence_values::<V>().flatten().map(|v| to_meta(&v, depth + 1)).collect())
            } else {
                let mut map = MetaMap::new();
                for (k, v) in t.pairs::<V, V>().flatten() {
                    if let V::String(k) = k {
                        map.insert(k.to_string_lossy(), to_meta(&v, depth + 1));
                    }
                }
                MetaValue::Map(map)
            }
        }
        _ => MetaValue::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(src: &str) -> TestMeta {
        let lua = Lua::new();
        let t: Table = lua.load(src).eval().unwrap();
        parse_meta(&lua, Some(&t))
    }

    #[test]
    fn meta_becomes_data_with_arrays_maps_and_bytes() {
        let m = meta(
            "return {tags = {'net', 'slow'}, area = 'boot', n = 3, f = 0.5, raw = '\\255', \
                      nested = {k = true}, fn = print}",
        )
        .data;
        assert_eq!(m["tags"].strings(), vec!["net", "slow"]);
        assert_eq!(m["area"], MetaValue::Str("boot".into()));
        assert_eq!((m["n"].clone(), m["f"].clone()), (MetaValue::Int(3), MetaValue::Float(0.5)));
        assert_eq!(m["raw"], MetaValue::Bytes(vec![255]));
        assert_eq!(m["nested"], MetaValue::Map(MetaMap::from([("k".into(), MetaValue::Bool(true))])));
        assert_eq!(m["fn"], MetaValue::Null);
    }

    #[test]
    fn meta_is_parsed_and_a_bad_timeout_is_kept_as_its_message() {
        assert_eq!(meta("return {}"), TestMeta { skip: None, timeout: Ok(None), data: MetaMap::new() });
        assert_eq!(meta("return {skip = true}").skip.as_deref(), Some("skipped (meta.skip)"));
        assert_eq!(meta("return {skip = 'flaky'}").skip.as_deref(), Some("skipped: flaky"));
        assert_eq!(meta("return {skip = false}").skip, None);
        assert_eq!(meta("return {timeout = '250ms'}").timeout, Ok(Some(Duration::from_millis(250))));
        assert_eq!(meta("return {timeout = 3}").timeout, Ok(Some(Duration::from_secs(3))));
        let bad = meta("return {timeout = 'soon'}").timeout.unwrap_err();
        assert!(bad.contains("meta.timeout") && bad.contains("`soon`"), "{bad}");
        assert!(meta("return {timeout = -1}").timeout.is_err());
    }
}
