//! The keeper as a child subreaper: whatever is orphaned below it is re-parented to it, killed and
//! reaped, so that no process of the tree outlives a server that died.
//!
//! A job's own children (a shell's background command, a build tool's compilers) get no
//! parent-death signal of their own. If the server is killed, the job dies with it (its
//! parent-death signal), but its children would live on, re-parented to init, and keep writing to
//! the log: seed 004's symptom. With `PR_SET_CHILD_SUBREAPER` they are re-parented to the keeper
//! instead, which sweeps them after each death of the server and before it exits.

use std::io;

/// Makes this process the subreaper of its descendants.
///
/// # Errors
/// If `prctl` fails (the kernel is older than 3.4).
pub(crate) fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Kills and reaps every child of this process (call it when no server runs), repeating while
/// killing them orphans more (their own children come to us in turn). Returns how many it swept.
pub(crate) fn sweep() -> usize {
    let me = std::process::id();
    let mut swept = 0;
    // Each round takes one generation; a tree deeper than this is swept at the next death.
    for _ in 0..32 {
        let orphans = children_of(me);
        if orphans.is_empty() {
            break;
        }
        for pid in orphans {
            // SAFETY: kill and waitpid on a child of ours: it cannot be reaped by anyone else, so
            // the pid cannot have been reused before we wait for it.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
                let mut status = 0;
                libc::waitpid(pid as libc::pid_t, &mut status, 0);
            }
            log::warn!("killed orphaned process {pid} left behind by a dead server or job");
            swept += 1;
        }
    }
    swept
}

/// The pids whose parent is `parent`, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // Field 4, after the parenthesised command name (which may contain spaces).
            let ppid: u32 = stat
                .rsplit_once(") ")?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}
