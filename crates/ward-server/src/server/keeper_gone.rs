//! The keeper's death, seen by the server: the services stopped, with whatever they started,
//! before the server follows it.
//!
//! The keeper starts the server with SIGKILL as its parent-death signal, so that no server
//! outlives its keeper. But a service's workers that left its process group (setsid, a double
//! fork) have no parent-death signal of their own, and the keeper, the subreaper that would
//! sweep them after a server's death, is the one that died: killed with the server, they would
//! live on, re-parented to init, as seed 004's workers did. So the server trades SIGKILL for
//! [`KEEPER_GONE`], on which it stops its services through their cgroups (without draining its
//! jobs: nobody is left to restart it) and exits.
//!
//! A server too wedged to stop must still not outlive its keeper: the signal's handler also
//! arms `alarm(2)`, whose SIGALRM, uncaught, ends the process if the stop takes too long.

use std::io;
use std::time::Duration;

/// The server's parent-death signal.
pub(crate) const KEEPER_GONE: i32 = libc::SIGUSR2;

/// Makes [`KEEPER_GONE`] the server's parent-death signal, and arms the alarm that ends a server
/// that does not stop within `deadline` of it. The server must take the signal from its signal
/// iterator and stop.
///
/// No window is left open: until `prctl` returns, the keeper's death still sends SIGKILL.
///
/// # Errors
/// If the handler cannot be registered or `prctl` fails; the server then keeps SIGKILL.
pub(crate) fn watch(deadline: Duration) -> io::Result<()> {
    let seconds = deadline.as_secs().clamp(1, u64::from(u32::MAX)) as libc::c_uint;
    // SAFETY: the action only calls alarm(2), which is async-signal-safe, allocates nothing and
    // takes no lock.
    unsafe {
        signal_hook::low_level::register(KEEPER_GONE, move || {
            libc::alarm(seconds);
        })?;
    }
    // SAFETY: prctl with integer arguments only; no memory is passed.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, KEEPER_GONE, 0, 0, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
