//! Builds the static guest agent and embeds it in the host binary.
//!
//! The agent must be a static executable (`+crt-static`), which cannot apply
//! to this crate's proc-macro dependencies, so it is built by a nested cargo
//! with an explicit `--target` (target rustflags then skip build scripts and
//! proc-macros) into its own target directory (no lock contention with the
//! outer build). `PROVIUM_AGENT_BIN` skips the build and embeds a prebuilt
//! agent instead.

use std::path::PathBuf;
use std::process::Command;

const TARGET: &str = "x86_64-unknown-linux-gnu";

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap().parent().unwrap().to_path_buf();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-env-changed=PROVIUM_AGENT_BIN");
    for dir in ["crates/provium-agent", "crates/provium-protocol"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).join("src").display());
        println!("cargo:rerun-if-changed={}", workspace.join(dir).join("Cargo.toml").display());
    }

    let agent = match std::env::var("PROVIUM_AGENT_BIN") {
        Ok(prebuilt) => PathBuf::from(prebuilt),
        Err(_) => build_agent(&workspace, &out_dir),
    };
    let dest = out_dir.join("provium-agent");
    std::fs::copy(&agent, &dest).unwrap_or_else(|e| panic!("copy agent {}: {e}", agent.display()));
    println!("cargo:rustc-env=PROVIUM_AGENT_PATH={}", dest.display());
}

fn build_agent(workspace: &std::path::Path, out_dir: &std::path::Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = out_dir.join("agent-target");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--release", "--locked", "-p", "provium-agent", "--target", TARGET])
        .arg("--target-dir")
        .arg(&target_dir)
        .args(["--config", "profile.release.strip=true", "--config", "profile.release.opt-level=\"s\""])
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static");
    // Do not let an outer clippy/coverage wrapper or flags leak in.
    for var in ["RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER", "RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS", "CARGO_TARGET_DIR"] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("run cargo to build provium-agent");
    assert!(status.success(), "building provium-agent failed ({status})");
    target_dir.join(TARGET).join("release").join("provium-agent")
}
