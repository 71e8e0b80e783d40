//! The `ward` binary: nothing but a call into the `ward` library, where the CLI is testable.

use std::process::ExitCode;

fn main() -> ExitCode {
    ward::run()
}
