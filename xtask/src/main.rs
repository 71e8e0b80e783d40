//! `cargo xtask`: project automation for ward: tidy checks, stress, benchmarks and packaging.

mod bench;
mod dist;
mod stress;
mod tidy;

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("tidy") => match tidy::check(&workspace_root()) {
            Ok(problems) if problems.is_empty() => {
                println!("tidy: ok");
                ExitCode::SUCCESS
            }
            Ok(problems) => {
                for p in &problems {
                    eprintln!("tidy: {p}");
                }
                eprintln!("tidy: {} problem(s)", problems.len());
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("tidy: {e:#}");
                ExitCode::FAILURE
            }
        },
        Some("bench") => bench::run(&args[1..]),
        Some("stress") => stress::main(&args[1..], &workspace_root()),
        Some("dist") => dist::main(&args[1..]),
        Some("--help" | "-h" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

const USAGE: &str = "usage: cargo xtask tidy | cargo xtask stress [--quick] [...] | cargo xtask bench [--only NAME] [...] | cargo xtask dist
  (cargo xtask stress --help and cargo xtask bench --help list their options)";

/// The workspace root: xtask lives one level below it.
pub(crate) fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}
