//! `RunResult`: what `vm:run` returns. Fields `exit_code` (−1 when
//! signalled, −2 when timed out), `stdout`, `stderr`, `status`, `signal`,
//! `timed_out`; methods `ok()` and `assert_ok()`.

use mlua::{UserData, UserDataFields, UserDataMethods};
use provium_protocol::{ExecOutput, ExitStatus};

use super::errors::raise;

pub struct RunResult {
    pub command: String,
    pub out: ExecOutput,
}

impl RunResult {
    pub fn exit_code(&self) -> i64 {
        match self.out.status {
            ExitStatus::Exited(c) => c as i64,
            ExitStatus::Signalled(_) => -1,
            ExitStatus::TimedOut => -2,
        }
    }

    pub fn status(&self) -> &'static str {
        match self.out.status {
            ExitStatus::Exited(_) => "exited",
            ExitStatus::Signalled(_) => "signalled",
            ExitStatus::TimedOut => "timed_out",
        }
    }

    pub fn ok(&self) -> bool {
        self.out.status == ExitStatus::Exited(0)
    }

    /// `status=exited code=1` / `status=signalled signal=9` / `status=timed_out`.
    fn status_detail(&self) -> String {
        match self.out.status {
            ExitStatus::Exited(c) => format!("status=exited code={c}"),
            ExitStatus::Signalled(s) => format!("status=signalled signal={s}"),
            ExitStatus::TimedOut => "status=timed_out".to_string(),
        }
    }

    pub fn failure_message(&self) -> String {
        let shown = |b: &[u8]| {
            let s = String::from_utf8_lossy(b);
            let s = if s.len() > 2000 { format!("…{}", &s[s.len() - 2000..]) } else { s.into_owned() };
            format!("{s:?}")
        };
        format!(
            "command `{}` failed: {} stdout={} stderr={}",
            self.command,
            self.status_detail(),
            shown(&self.out.stdout),
            shown(&self.out.stderr)
        )
    }
}

impl UserData for RunResult {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("exit_code", |_, r| Ok(r.exit_code()));
        fields.add_field_method_get("stdout", |lua, r| lua.create_string(&r.out.stdout));
        fields.add_field_method_get("stderr", |lua, r| lua.create_string(&r.out.stderr));
        fields.add_field_method_get("status", |_, r| Ok(r.status()));
        fields.add_field_method_get("signal", |_, r| {
            Ok(match r.out.status {
                ExitStatus::Signalled(s) => Some(s),
                _ => None,
            })
        });
        fields.add_field_method_get("timed_out", |_, r| Ok(r.out.status == ExitStatus::TimedOut));
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        let methods = &mut super::args::Checked::new(methods, "result");
        methods.add_method("ok", |_, r, ()| Ok(r.ok()));
        methods.add_method(
            "assert_ok",
            |lua, r, ()| {
                if r.ok() {
                    Ok(())
                } else {
                    Err(raise(lua, r.failure_message()))
                }
            },
        );
        methods.add_meta_method("__tostring", |_, r, ()| {
            Ok(format!(
                "RunResult{{ status={}, stdout=<{}B>, stderr=<{}B> }}",
                r.status(),
                r.out.stdout.len(),
                r.out.stderr.len()
            ))
        });
    }
}
