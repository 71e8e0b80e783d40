//! Shared setup for the end-to-end tests: finds (building if needed) the real `ward` binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The path of a freshly built `ward` binary from this workspace.
///
/// A test binary of another package has no `CARGO_BIN_EXE_ward`, so this builds the `ward` package
/// once per test process with the same cargo, profile and target directory, and returns its path.
///
/// # Panics
/// If cargo cannot build the binary: every end-to-end test needs it.
pub fn ward_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // The test executable lives in <target>/<profile>/deps/.
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile> directory");
        let target_dir = profile_dir.parent().expect("target directory");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "--package", "ward", "--bin", "ward"]);
        build.arg("--target-dir").arg(target_dir);
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        let status = build
            .status()
            .expect("running cargo build for the ward binary");
        assert!(
            status.success(),
            "cargo build of the ward binary failed: {status}"
        );
        let bin = profile_dir.join("ward");
        assert!(bin.is_file(), "{} missing after cargo build", bin.display());
        bin
    })
}

/// A `Command` for the real `ward` binary with a clean logging environment.
pub fn ward() -> Command {
    let mut cmd = Command::new(ward_bin());
    cmd.env_remove("RUST_LOG");
    cmd
}
