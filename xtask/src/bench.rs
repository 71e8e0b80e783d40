//! `cargo xtask bench`: runs each crate's benchmark example in release, one after the other.

use std::process::{Command, ExitCode};

use crate::workspace_root;

/// The benchmarks `cargo xtask bench` knows: each is an example named `bench` in a crate, built in
/// release, that measures the crate and its baseline in the same process and prints both.
const BENCHES: [(&str, &str); 5] = [
    ("watch", "ward-watch"),
    ("queue", "ward-queue"),
    ("supervisor", "ward-supervisor"),
    ("crashdiag", "ward-crashdiag"),
    ("server", "ward-server"),
];

/// Runs every benchmark (or the one `--only NAME` picks), each in release, one after the other so
/// that they do not compete for the machine's cores.
pub(crate) fn run(args: &[String]) -> ExitCode {
    let only = match args {
        [] => None,
        [flag, name] if flag == "--only" => Some(name.as_str()),
        _ => {
            eprintln!("usage: cargo xtask bench [--only NAME]");
            return ExitCode::from(2);
        }
    };
    let chosen: Vec<_> = BENCHES
        .iter()
        .filter(|(name, _)| only.is_none_or(|o| o == *name))
        .collect();
    if chosen.is_empty() {
        let names: Vec<_> = BENCHES.iter().map(|(name, _)| *name).collect();
        eprintln!(
            "bench: no benchmark named {:?}; there are: {}",
            only.unwrap_or(""),
            names.join(", ")
        );
        return ExitCode::from(2);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut failed = Vec::new();
    for (name, package) in chosen {
        println!("==== bench {name} ({package}) ====");
        let status = Command::new(&cargo)
            .current_dir(workspace_root())
            .args([
                "run",
                "--release",
                "--quiet",
                "--package",
                package,
                "--example",
                "bench",
            ])
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => failed.push(format!("{name}: {s}")),
            Err(e) => failed.push(format!("{name}: could not run cargo: {e}")),
        }
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("bench: failed: {}", failed.join("; "));
        ExitCode::FAILURE
    }
}
