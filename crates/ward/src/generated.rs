//! What is generated from the clap definition: shell completion scripts (`ward completions
//! SHELL`) and the man pages (`ward __man DIR`, which `cargo xtask dist` runs).
//!
//! The man pages are rendered by the `ward` binary rather than by xtask linking this crate: xtask
//! would then build the whole daemon (ward-server and everything under it) for `cargo xtask
//! tidy`, and the pages come from the very binary that is shipped beside them, whatever its
//! build.

use std::io::{self, Write};
use std::path::Path;

use clap_complete::Shell;

/// Writes the completion script for `shell` to stdout.
///
/// # Errors
/// If stdout cannot be written (a closed pipe is not an error).
pub(crate) fn completions(shell: Shell, command: &clap::Command) -> io::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut offered(command), "ward", &mut script);
    write_out(&script)
}

/// `command` as completions offer it: without its hidden (internal) subcommands, which
/// clap_complete's scripts would offer all the same. Only what completion reads is kept.
fn offered(command: &clap::Command) -> clap::Command {
    clap::Command::new("ward")
        .version(env!("CARGO_PKG_VERSION"))
        .propagate_version(true)
        .args(command.get_arguments().cloned())
        .subcommands(
            command
                .get_subcommands()
                .filter(|s| !s.is_hide_set())
                .cloned(),
        )
}

/// Writes the man pages (roff) into `dir`: `ward.1`, and `ward-SUBCOMMAND.1` for each
/// subcommand it lists.
///
/// # Errors
/// If a page cannot be rendered or written.
pub(crate) fn man_pages(command: clap::Command, dir: &Path) -> io::Result<()> {
    clap_mangen::generate_to(command, dir)
}

fn write_out(bytes: &[u8]) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        result => result,
    }
}
