//! The `ward` command line: parses arguments and hands each subcommand to `ward-server`.
//!
//! Nothing here knows how ward works; it only translates a command line into calls and exit codes.

use std::process::ExitCode;

use clap::Parser;

/// Watch file trees, run jobs on changes, never die silently.
#[derive(Debug, Parser)]
#[command(name = "ward", version, about)]
struct Cli {}

/// Runs the `ward` command line and returns its exit code.
pub fn run() -> ExitCode {
    let _cli = Cli::parse();
    ExitCode::SUCCESS
}
