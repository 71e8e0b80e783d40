//! `ward-keeper`: the keeper alone, which `ward start` and `ward run` exec. Linking nothing but
//! the keeper keeps the code it runs, and so its resident memory, small (see `ward_server::keeper`).

use std::process::ExitCode;

fn main() -> ExitCode {
    match ward_server::keeper_process(std::env::args_os().skip(1)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ward keeper: {e}");
            ExitCode::FAILURE
        }
    }
}
