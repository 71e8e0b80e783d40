//! Batch triggers (`batch = true`): their settings, and how the paths of one run reach its
//! command (stdin, `WARD_PATHS_FILE`, and `{paths}` arguments when they fit). Pure data and
//! functions; the thread that runs a batch trigger's command is the server's (`server/batch.rs`).

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// What a batch trigger does with changes that arrive while its command runs (watchexec's
/// `--on-busy-update`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBusy {
    /// One more run after the current one, with everything that changed meanwhile.
    Queue,
    /// Stop the running one (SIGTERM to its group, SIGKILL after the grace) and start again
    /// with its paths and the new ones.
    Restart,
    /// Send the trigger's `signal` to the running one and let it run; the new paths are owed to
    /// the next run.
    Signal,
    /// No run for them now; they stay owed and run with the next run, or at the next start.
    Ignore,
}

impl OnBusy {
    /// Its name in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            OnBusy::Queue => "queue",
            OnBusy::Restart => "restart",
            OnBusy::Signal => "signal",
            OnBusy::Ignore => "ignore",
        }
    }

    /// The mode named `text`.
    ///
    /// # Errors
    /// What the modes are, when `text` is none of them.
    pub fn parse(text: &str) -> Result<OnBusy, String> {
        [
            OnBusy::Queue,
            OnBusy::Restart,
            OnBusy::Signal,
            OnBusy::Ignore,
        ]
        .into_iter()
        .find(|mode| mode.as_str() == text)
        .ok_or_else(|| {
            "unknown mode: on_busy is \"queue\", \"restart\", \"signal\" or \"ignore\"".to_owned()
        })
    }
}

/// The settings of a batch trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchSettings {
    /// What changes during a run do.
    pub on_busy: OnBusy,
    /// The signal `on_busy = "signal"` sends to the running command's process group.
    pub signal: i32,
    /// Paths separated by NUL instead of newline, on stdin and in `WARD_PATHS_FILE`.
    pub paths_nul: bool,
}

/// The signal of `on_busy = "signal"` when the trigger names none: the usual "read your input
/// again" signal of daemons.
pub const DEFAULT_SIGNAL: i32 = libc::SIGHUP;

impl Default for BatchSettings {
    fn default() -> BatchSettings {
        BatchSettings {
            on_busy: OnBusy::Queue,
            signal: DEFAULT_SIGNAL,
            paths_nul: false,
        }
    }
}

/// A signal's number from its name, with or without `SIG`, in any case (`"HUP"`, `"sigusr1"`).
///
/// # Errors
/// When `text` names no signal.
pub fn signal_named(text: &str) -> Result<i32, String> {
    let upper = text.to_ascii_uppercase();
    let wanted = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    (1..=libc::SIGRTMAX())
        .find(|&n| ward_sys::signal::name(n) == Some(wanted.as_str()))
        .ok_or_else(|| "not a signal name (such as \"SIGHUP\" or \"SIGUSR1\")".to_owned())
}

/// The paths of a run as its command reads them on stdin and in `WARD_PATHS_FILE`: each
/// followed by a newline, or by a NUL with `nul` (the only separator no path can contain).
pub fn encode_paths(paths: &[PathBuf], nul: bool) -> Vec<u8> {
    let separator = if nul { 0 } else { b'\n' };
    let mut bytes =
        Vec::with_capacity(paths.iter().map(|p| p.as_os_str().len() + 1).sum::<usize>());
    for path in paths {
        bytes.extend_from_slice(path.as_os_str().as_bytes());
        bytes.push(separator);
    }
    bytes
}

/// The most bytes a run's argv may take, counting each argument's bytes, its NUL and its
/// pointer: well under Linux's `ARG_MAX` (a quarter of the stack limit, 2 MiB by default) and
/// its 128 KiB limit on one string, so that the environment ward passes always has room.
pub const ARGV_MAX: usize = 128 * 1024;

/// The argv of a batch run: each argument that is exactly `{paths}` becomes every path, when the
/// whole argv fits in [`ARGV_MAX`]; when it does not, the `{paths}` arguments are dropped and
/// the second value is `false` (the paths are then on stdin and in `WARD_PATHS_FILE` only).
pub fn batch_argv(argv: &[String], paths: &[PathBuf]) -> (Vec<OsString>, bool) {
    let cost = |bytes: usize| bytes + 1 + size_of::<usize>();
    let placeholders = argv.iter().filter(|a| *a == "{paths}").count();
    let fixed: usize = argv
        .iter()
        .filter(|a| *a != "{paths}")
        .map(|a| cost(a.len()))
        .sum();
    let per_copy: usize = paths.iter().map(|p| cost(p.as_os_str().len())).sum();
    let fits = fixed.saturating_add(per_copy.saturating_mul(placeholders)) <= ARGV_MAX;
    let mut out = Vec::with_capacity(argv.len() + if fits { paths.len() } else { 0 });
    for arg in argv {
        if arg == "{paths}" {
            if fits {
                out.extend(paths.iter().map(|p| p.clone().into_os_string()));
            }
        } else {
            out.push(OsString::from(arg));
        }
    }
    (out, fits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn paths_are_newline_or_nul_terminated_bytes_exactly() {
        let odd = PathBuf::from(OsStr::from_bytes(b"/r/caf\xe9 x"));
        let paths = [PathBuf::from("/r/a"), odd];
        assert_eq!(encode_paths(&paths, false), b"/r/a\n/r/caf\xe9 x\n");
        assert_eq!(encode_paths(&paths, true), b"/r/a\0/r/caf\xe9 x\0");
        assert!(encode_paths(&[], false).is_empty());
    }

    #[test]
    fn paths_placeholder_expands_only_as_a_whole_argument_and_only_when_it_fits() {
        let argv: Vec<String> = ["wc", "-l", "{paths}", "x{paths}"]
            .map(String::from)
            .to_vec();
        let paths = [PathBuf::from("/r/a"), PathBuf::from("/r/b c")];
        let (out, fits) = batch_argv(&argv, &paths);
        assert!(fits);
        assert_eq!(
            out,
            ["wc", "-l", "/r/a", "/r/b c", "x{paths}"].map(OsString::from)
        );

        // Just at the bound, and one byte over it.
        let fixed: usize = ["wc", "-l", "x{paths}"].iter().map(|a| a.len() + 9).sum();
        let room = ARGV_MAX - fixed;
        let exact = [PathBuf::from("p".repeat(room - 9))];
        assert!(batch_argv(&argv, &exact).1);
        let over = [PathBuf::from("p".repeat(room - 8))];
        let (out, fits) = batch_argv(&argv, &over);
        assert!(!fits);
        assert_eq!(out, ["wc", "-l", "x{paths}"].map(OsString::from));

        // Each `{paths}` counts; many small paths add up.
        let many: Vec<PathBuf> = (0..20_000).map(|i| format!("/tree/f{i}").into()).collect();
        assert!(!batch_argv(&argv, &many).1);
        assert!(batch_argv(&argv, &many[..1000]).1);
        let twice: Vec<String> = ["x", "{paths}", "{paths}"].map(String::from).to_vec();
        let (out, fits) = batch_argv(&twice, &paths);
        assert!(fits);
        assert_eq!(out.len(), 5);
    }

    #[test]
    fn on_busy_and_signal_names() {
        for mode in [
            OnBusy::Queue,
            OnBusy::Restart,
            OnBusy::Signal,
            OnBusy::Ignore,
        ] {
            assert_eq!(OnBusy::parse(mode.as_str()), Ok(mode));
        }
        assert!(
            OnBusy::parse("do-nothing")
                .unwrap_err()
                .contains("\"ignore\"")
        );
        assert_eq!(signal_named("HUP"), Ok(libc::SIGHUP));
        assert_eq!(signal_named("sigusr2"), Ok(libc::SIGUSR2));
        assert!(signal_named("SIGFOO").is_err());
        assert!(signal_named("1").is_err());
    }
}
