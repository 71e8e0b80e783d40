//! End-to-end tests of the `ward` binary's command line.

use ward_e2e::ward;

#[test]
fn version_names_the_binary_and_its_version() {
    let out = ward().arg("--version").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.trim(), format!("ward {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn an_unknown_argument_is_an_error_naming_it() {
    let out = ward().arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("--no-such-flag"), "{stderr}");
}
