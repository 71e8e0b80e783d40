//! The process umask, read and set. Jobs and workers inherit the server's: the one ward was
//! started with, or `[jobs] umask` (see `Handover::apply_umask`).

/// This process's umask. Reading it means setting it, so it is put straight back: call it only
/// where no other thread creates files (the command line before it starts any thread).
pub fn current() -> u32 {
    // SAFETY: umask cannot fail and has no memory-safety preconditions.
    let mask = unsafe { libc::umask(0o077) };
    set(mask);
    mask
}

/// Sets this process's umask.
pub fn set(mask: u32) {
    // SAFETY: as above; `mask` is at most 0o777 (checked by the configuration).
    unsafe { libc::umask(mask as libc::mode_t) };
}
