//! `ward-keeper`: the keeper alone, which `ward start` and `ward run` exec. Linking nothing but
//! the keeper keeps the code it runs, and so its resident memory, small (see `ward_server::keeper`).

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    match ward_server::keeper_process(std::env::args_os().skip(1)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Under `ward start` stderr is the log file: on a full disk this write fails, and
            // must not turn into a panic.
            let _ = writeln!(std::io::stderr(), "ward keeper: {e}");
            ExitCode::FAILURE
        }
    }
}
