//! `cargo xtask dist`: what a package of ward ships, in `target/dist/`: the release binaries
//! (`ward` and the keeper it execs, `ward-keeper`), the man pages and the shell completions.
//!
//! The man pages and completions are written by the release `ward` itself (`ward __man DIR`,
//! `ward completions SHELL`), not by xtask linking the `ward` crate: that would build the whole
//! daemon into xtask for every `cargo xtask tidy`, and this way they describe exactly the binary
//! shipped beside them.

use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

use crate::bench::{cargo, target_dir};
use crate::workspace_root;

/// The shells `ward completions` writes for, and the file each one's script goes in (the names
/// each shell's completion directory expects).
const COMPLETIONS: [(&str, &str); 5] = [
    ("bash", "ward.bash"),
    ("zsh", "_ward"),
    ("fish", "ward.fish"),
    ("elvish", "ward.elv"),
    ("powershell", "_ward.ps1"),
];

/// The binaries shipped.
const BINARIES: [&str; 2] = ["ward", "ward-keeper"];

pub(crate) fn main(args: &[String]) -> ExitCode {
    if !args.is_empty() {
        eprintln!("usage: cargo xtask dist (it takes no options)");
        return ExitCode::from(2);
    }
    match dist() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dist: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dist() -> Result<()> {
    println!("dist: building ward in release ...");
    let status = Command::new(cargo())
        .current_dir(workspace_root())
        .args(["build", "--release", "--quiet", "-p", "ward"])
        .args(BINARIES.iter().flat_map(|b| ["--bin", b]))
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building ward failed: {status}");
    }
    let release = target_dir().join("release");
    let dist = target_dir().join("dist");
    // What an earlier run left (a page of a subcommand since removed) must not be shipped.
    match std::fs::remove_dir_all(&dist) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("emptying {}", dist.display()));
        }
        _ => {}
    }
    std::fs::create_dir_all(&dist).with_context(|| format!("creating {}", dist.display()))?;
    for binary in BINARIES {
        std::fs::copy(release.join(binary), dist.join(binary))
            .with_context(|| format!("copying {binary}"))?;
    }
    let ward = dist.join("ward");
    run(Command::new(&ward).arg("__man").arg(&dist), "ward __man")?;
    for (shell, file) in COMPLETIONS {
        let script = run(Command::new(&ward).args(["completions", shell]), shell)?;
        write(&dist.join(file), &script)?;
    }
    println!("dist: {}", dist.display());
    let mut names: Vec<String> = std::fs::read_dir(&dist)?
        .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    for name in names {
        println!("  {name}");
    }
    Ok(())
}

/// Runs `command` and returns its stdout; `what` names it in an error.
fn run(command: &mut Command, what: &str) -> Result<Vec<u8>> {
    let out = command
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}
