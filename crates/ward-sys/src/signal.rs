//! Signal names: the one table, safe to use inside a signal handler. Not the handling of signals,
//! which is the crates' that install handlers.

/// Names of the real-time signals, `SIGRTMIN+0` to `SIGRTMIN+30`: the whole range where
/// `SIGRTMAX` is 64 (x86, ARM, RISC-V; 34 to 64 under glibc, 35 to 64 under musl).
#[cfg(target_os = "linux")]
const REAL_TIME: [&str; 31] = [
    "SIGRTMIN+0",
    "SIGRTMIN+1",
    "SIGRTMIN+2",
    "SIGRTMIN+3",
    "SIGRTMIN+4",
    "SIGRTMIN+5",
    "SIGRTMIN+6",
    "SIGRTMIN+7",
    "SIGRTMIN+8",
    "SIGRTMIN+9",
    "SIGRTMIN+10",
    "SIGRTMIN+11",
    "SIGRTMIN+12",
    "SIGRTMIN+13",
    "SIGRTMIN+14",
    "SIGRTMIN+15",
    "SIGRTMIN+16",
    "SIGRTMIN+17",
    "SIGRTMIN+18",
    "SIGRTMIN+19",
    "SIGRTMIN+20",
    "SIGRTMIN+21",
    "SIGRTMIN+22",
    "SIGRTMIN+23",
    "SIGRTMIN+24",
    "SIGRTMIN+25",
    "SIGRTMIN+26",
    "SIGRTMIN+27",
    "SIGRTMIN+28",
    "SIGRTMIN+29",
    "SIGRTMIN+30",
];

/// The conventional name of signal number `signal` (`SIGSEGV`, `SIGCHLD`, `SIGRTMIN+3`), or
/// `None` for a number that is not a signal here.
///
/// Every standard signal of the platform has its name; where two names share a number, the one
/// `kill -l` prints (`SIGABRT`, not `SIGIOT`; `SIGCHLD`; `SIGIO`, not `SIGPOLL`; `SIGSYS`). A
/// real-time signal is named from the C library's `SIGRTMIN`, as `kill -l` names it; the few
/// below it that the C library keeps for itself (32 and 33 under glibc) have no name.
///
/// Async-signal-safe: no allocation, no lock, no formatting. The name is a `&'static str`, and
/// `SIGRTMIN` is a value glibc and musl fix when the process starts.
pub fn name(signal: i32) -> Option<&'static str> {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGCONT => "SIGCONT",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGTSTP => "SIGTSTP",
        libc::SIGTTIN => "SIGTTIN",
        libc::SIGTTOU => "SIGTTOU",
        libc::SIGURG => "SIGURG",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGVTALRM => "SIGVTALRM",
        libc::SIGPROF => "SIGPROF",
        libc::SIGWINCH => "SIGWINCH",
        libc::SIGIO => "SIGIO",
        libc::SIGSYS => "SIGSYS",
        #[cfg(target_os = "linux")]
        libc::SIGPWR => "SIGPWR",
        // MIPS and SPARC have no stack-fault signal.
        #[cfg(all(
            target_os = "linux",
            not(any(
                target_arch = "mips",
                target_arch = "mips64",
                target_arch = "sparc",
                target_arch = "sparc64"
            ))
        ))]
        libc::SIGSTKFLT => "SIGSTKFLT",
        _ => return real_time(signal),
    };
    Some(name)
}

#[cfg(target_os = "linux")]
fn real_time(signal: i32) -> Option<&'static str> {
    if signal > libc::SIGRTMAX() {
        return None;
    }
    // Checked: a panic is no way out of a signal handler.
    let offset = usize::try_from(signal.checked_sub(libc::SIGRTMIN())?).ok()?;
    REAL_TIME.get(offset).copied()
}

#[cfg(not(target_os = "linux"))]
fn real_time(_signal: i32) -> Option<&'static str> {
    None
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn standard_signals_have_their_kill_l_names() {
        let cases = [
            (libc::SIGHUP, "SIGHUP"),
            (libc::SIGKILL, "SIGKILL"),
            (libc::SIGSEGV, "SIGSEGV"),
            (libc::SIGTERM, "SIGTERM"),
            (libc::SIGCHLD, "SIGCHLD"),
            (libc::SIGPWR, "SIGPWR"),
            (libc::SIGSYS, "SIGSYS"),
            (libc::SIGIO, "SIGIO"),
            (libc::SIGSTKFLT, "SIGSTKFLT"),
            (libc::SIGWINCH, "SIGWINCH"),
        ];
        for (signal, want) in cases {
            assert_eq!(name(signal), Some(want), "{signal}");
        }
    }

    #[test]
    fn every_signal_up_to_sigrtmax_is_named_but_those_the_c_library_keeps() {
        let min = libc::SIGRTMIN();
        for signal in 1..=libc::SIGRTMAX() {
            let named = name(signal);
            if (32..min).contains(&signal) {
                assert_eq!(named, None, "{signal} is the C library's");
            } else {
                assert!(named.is_some(), "{signal} has no name");
            }
        }
        assert_eq!(name(min), Some("SIGRTMIN+0"));
        assert_eq!(name(min + 3), Some("SIGRTMIN+3"));
        assert_eq!(
            name(libc::SIGRTMAX()).map(|n| n.strip_prefix("SIGRTMIN+").is_some()),
            Some(true)
        );
    }

    #[test]
    fn numbers_that_are_not_signals_have_no_name() {
        for signal in [0, -1, libc::SIGRTMAX() + 1, 1000, i32::MIN, i32::MAX] {
            assert_eq!(name(signal), None, "{signal}");
        }
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = (1..=libc::SIGRTMAX()).filter_map(name).collect();
        let all = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all);
    }
}
