//! The `provium` binary: parse arguments, set up diagnostics, run, exit.

use std::io::IsTerminal;

use clap::Parser;

fn main() {
    let cli = provium::cli::Cli::parse();
    let default = if cli.verbose { "provium=debug" } else { "provium=warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PROVIUM_LOG").unwrap_or_else(|_| default.into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    std::process::exit(provium::cli::main_with(cli));
}
