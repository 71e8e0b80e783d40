//! Starting a child with `clone(CLONE_VM | CLONE_VFORK)`: everything that allocates happens in
//! the parent beforehand; the child, which runs on the parent's memory until it execs, only makes
//! system calls and writes the step that failed into an atomic the parent reads afterwards.
//!
//! A `pre_exec` hook would make std fall back to `fork`, whose page-table copy, copy-on-write
//! faults and teardown at exec cost more than the rest of a short job put together.

use std::cell::Cell;
use std::ffi::{CStr, CString, OsStr, OsString, c_char, c_int, c_void};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::ptr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU8, Ordering};

use crate::spec::{Environment, Input, Output};
use crate::sys::Spawned;
use crate::{ChildSpec, Error, ResourceLimits, Result};

use super::{Cgroup, pipe};

// The credential system calls with 32-bit ids (on 32-bit x86 and arm the plain names are the old
// 16-bit ones).
#[cfg(not(any(target_arch = "x86", target_arch = "arm")))]
use libc::{SYS_setgroups, SYS_setresgid, SYS_setresuid};
#[cfg(any(target_arch = "x86", target_arch = "arm"))]
use libc::{
    SYS_setgroups32 as SYS_setgroups, SYS_setresgid32 as SYS_setresgid,
    SYS_setresuid32 as SYS_setresuid,
};

/// The child's stack; it runs only the setup below, which needs a few KiB.
const STACK_SIZE: usize = 64 * 1024;

/// Where `execvp` looks when the child has no `PATH`.
#[cfg(target_env = "gnu")]
const DEFAULT_PATH: &[u8] = b"/bin:/usr/bin";
#[cfg(not(target_env = "gnu"))]
const DEFAULT_PATH: &[u8] = b"/usr/local/bin:/bin:/usr/bin";

/// glibc's `execvp` runs a file the kernel will not execute (`ENOEXEC`: a script without `#!`)
/// with `/bin/sh`, as POSIX asks; musl's does not.
const SCRIPT_FALLBACK: bool = cfg!(target_env = "gnu");
const SHELL: &CStr = c"/bin/sh";

/// `NAME_MAX` and `PATH_MAX` as glibc's `execvp` checks them.
const NAME_MAX: usize = 255;
const PATH_MAX: usize = 4096;

/// The step of the child's setup that failed; `Unset` while none has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Step {
    Unset = 0,
    SignalHandlers,
    ProcessGroup,
    Stdio,
    Cwd,
    ParentDeathSignal,
    Cgroup,
    AddressSpaceLimit,
    OpenFilesLimit,
    CoreSizeLimit,
    PassedFds,
    SignalMask,
    Exec,
    Nice,
    Groups,
    Gid,
    Uid,
}

impl Step {
    const ALL: [Step; 17] = [
        Step::Unset,
        Step::SignalHandlers,
        Step::ProcessGroup,
        Step::Stdio,
        Step::Cwd,
        Step::ParentDeathSignal,
        Step::Cgroup,
        Step::AddressSpaceLimit,
        Step::OpenFilesLimit,
        Step::CoreSizeLimit,
        Step::PassedFds,
        Step::SignalMask,
        Step::Exec,
        Step::Nice,
        Step::Groups,
        Step::Gid,
        Step::Uid,
    ];

    fn what(self) -> &'static str {
        match self {
            Step::Unset => "no step",
            Step::SignalHandlers => "resetting signal handlers",
            Step::ProcessGroup => "setpgid",
            Step::Stdio => "dup2 of stdin/stdout/stderr",
            Step::Cwd => "chdir",
            Step::ParentDeathSignal => "prctl(PR_SET_PDEATHSIG)",
            Step::Cgroup => "joining the memory cgroup",
            Step::AddressSpaceLimit => "setrlimit(RLIMIT_AS)",
            Step::OpenFilesLimit => "setrlimit(RLIMIT_NOFILE)",
            Step::CoreSizeLimit => "setrlimit(RLIMIT_CORE)",
            Step::PassedFds => "keeping the passed descriptors open",
            Step::SignalMask => "clearing the signal mask",
            Step::Exec => "exec",
            Step::Nice => "setpriority (the nice value)",
            Step::Groups => "setgroups",
            Step::Gid => "setresgid",
            Step::Uid => "setresuid",
        }
    }
}

/// What the child reports when a step fails: which, and its errno.
#[derive(Debug)]
struct Failure {
    step: AtomicU8,
    errno: AtomicI32,
}

/// The program and its arguments and environment as `execve` takes them, and the paths
/// `execvp` would try in order.
#[derive(Debug)]
struct ExecPlan {
    /// Owns what `argv` points to.
    _args: Vec<CString>,
    /// Owns what `envp` points to: the base's variables and the changed ones.
    _env: (Environment, Vec<CString>),
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    /// Full paths to try, in `PATH` order (just the program if it has a slash).
    candidates: Vec<CString>,
    /// The errno when there is no candidate at all (empty program, name too long).
    no_candidate: c_int,
    /// `["/bin/sh", <candidate>, argv[1..], NULL]` for a file the kernel will not execute; the
    /// child fills in slot 1.
    script_argv: Vec<AtomicPtr<c_char>>,
}

/// Everything the child reads between clone and exec, prepared by the parent. The child writes
/// only to `failure` and `exec.script_argv`, both atomics.
#[derive(Debug)]
struct ChildPlan<'a> {
    parent: libc::pid_t,
    /// The descriptor to put at 0, 1 and 2 (all above 2), or -1 to leave it inherited.
    stdio: [RawFd; 3],
    cwd: Option<&'a CStr>,
    /// Sorted, all above 2.
    keep_fds: &'a [RawFd],
    limits: ResourceLimits,
    cgroup_procs: Option<&'a CStr>,
    nice: Option<c_int>,
    /// User, group and supplementary groups to become.
    credentials: Option<(libc::uid_t, libc::gid_t, &'a [libc::gid_t])>,
    max_signal: c_int,
    exec: &'a ExecPlan,
    failure: Failure,
}

/// Starts the child described by `spec` (plus `extra_env`), keeping `keep_fds` open in it, in
/// `cgroup` if given. See the crate docs for what the child gets.
pub(crate) fn spawn(
    spec: &ChildSpec,
    extra_env: &[(OsString, OsString)],
    mut keep_fds: Vec<RawFd>,
    cgroup: Option<&Cgroup>,
) -> Result<Spawned> {
    keep_fds.retain(|&fd| fd > 2);
    keep_fds.sort_unstable();
    keep_fds.dedup();
    let cgroup_procs = match cgroup {
        Some(cgroup) => {
            let path = cgroup.path().join("cgroup.procs");
            Some(CString::new(path.as_os_str().as_bytes()).map_err(|_| {
                Error::Config(format!(
                    "cgroup path {} contains a NUL byte",
                    path.display()
                ))
            })?)
        }
        None => None,
    };
    let failed = |source: io::Error| Error::Spawn {
        program: spec.program.to_string_lossy().into_owned(),
        source,
    };
    let exec = exec_plan(spec, extra_env).map_err(failed)?;
    let cwd = spec
        .cwd
        .as_ref()
        .map(|dir| c_string(dir.as_os_str()))
        .transpose()
        .map_err(failed)?;
    let stdio = Stdio::new(spec).map_err(failed)?;
    let stack = match CHILD_STACK.take() {
        Some(stack) => stack,
        None => ChildStack::new().map_err(failed)?,
    };
    let plan = ChildPlan {
        // SAFETY: getpid has no preconditions.
        parent: unsafe { libc::getpid() },
        stdio: stdio.child_fds(),
        cwd: cwd.as_deref(),
        keep_fds: &keep_fds,
        limits: spec.limits,
        cgroup_procs: cgroup_procs.as_deref(),
        nice: spec.nice,
        credentials: spec
            .user
            .as_ref()
            .map(|user| (user.uid, user.gid, user.groups.as_slice())),
        max_signal: libc::SIGRTMAX(),
        exec: &exec,
        failure: Failure {
            step: AtomicU8::new(Step::Unset as u8),
            errno: AtomicI32::new(0),
        },
    };

    // SAFETY: `plan` and `stack` outlive the child's use of them: CLONE_VFORK suspends this
    // thread until the child has exec'd or exited, and only then is `plan` dropped and `stack`
    // handed to the next spawn.
    let cloned = unsafe { clone_vfork(&plan, &stack) };
    // The child has exec'd or exited (or was never made): the stack is free for the next spawn.
    CHILD_STACK.set(Some(stack));
    let (pid, pidfd) = cloned.map_err(failed)?;

    let step = plan.failure.step.load(Ordering::Relaxed);
    if step != Step::Unset as u8 {
        let errno = plan.failure.errno.load(Ordering::Relaxed);
        drop(pidfd);
        reap_failed(pid);
        let step = Step::ALL
            .get(usize::from(step))
            .copied()
            .unwrap_or(Step::Unset);
        let os = io::Error::from_raw_os_error(errno);
        let what = match (step, &spec.cwd, &spec.user) {
            (Step::Cwd, Some(dir), _) => format!("chdir to {}: {os}", dir.display()),
            (Step::Exec, _, _) => os.to_string(),
            (Step::Nice, _, _) => format!(
                "setpriority to nice value {}: {os}",
                spec.nice.unwrap_or_default()
            ),
            (Step::Groups, _, Some(user)) => {
                format!("setgroups to {:?}: {os}", user.groups)
            }
            (Step::Gid, _, Some(user)) => format!("setresgid to {}: {os}", user.gid),
            (Step::Uid, _, Some(user)) => format!("setresuid to {}: {os}", user.uid),
            _ => format!("{}: {os}", step.what()),
        };
        return Err(failed(io::Error::new(os.kind(), what)));
    }
    // The child has exec'd: its ends of the pipes (`stdio.child`) are closed here on return.
    let [stdin, stdout, stderr] = stdio.parent;
    Ok(Spawned {
        pid,
        pidfd,
        stdin,
        stdout,
        stderr,
    })
}

/// Whether children get a pidfd to wait on: `clone` makes one from Linux 5.2, but it can be
/// polled only from 5.3, which brought `pidfd_open`; so that is what is probed, once.
fn pidfds_pollable() -> bool {
    static POLLABLE: OnceLock<bool> = OnceLock::new();
    *POLLABLE.get_or_init(|| {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
        if fd < 0 {
            let err = io::Error::last_os_error();
            log::debug!("no pidfd_open ({err}): children's exits will be polled");
            return err.raw_os_error() != Some(libc::ENOSYS);
        }
        // SAFETY: a descriptor just made for us, closed once here.
        drop(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        true
    })
}

/// Clones the child with all signals blocked in this thread (so that no handler of ours ever
/// runs in the child, on our memory), and restores the mask once the child has exec'd or exited.
/// Returns its pid and, where the kernel makes one, its pidfd.
///
/// # Safety
/// `plan` and `stack` must stay valid until this returns (they do: the thread is suspended until
/// then, and both are borrowed for the whole call).
unsafe fn clone_vfork(
    plan: &ChildPlan<'_>,
    stack: &ChildStack,
) -> io::Result<(libc::pid_t, Option<OwnedFd>)> {
    let pidfds = pidfds_pollable();
    // SAFETY: an all-zero sigset_t is a valid value for sigfillset/pthread_sigmask to overwrite.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both sets are valid for the calls; sigfillset cannot fail on a valid pointer.
    let rc = unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old)
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // With CLONE_PIDFD the kernel writes the child's pidfd (close-on-exec) where the parent-tid
    // argument points: the reaper waits on it for the exit.
    let clone = |flags: c_int, pidfd: &mut c_int| {
        // SAFETY: `child_main` only makes async-signal-safe system calls on `plan`, which lives
        // on this suspended thread's stack frame; the child runs on `stack`, a separate mapping
        // with a guard page; CLONE_VM | CLONE_VFORK keeps this thread suspended until the child
        // execs or exits, so nothing else touches what the child uses. SIGCHLD makes it an
        // ordinary child for wait4/waitid. `pidfd` is valid for the kernel's write.
        unsafe {
            libc::clone(
                child_main,
                stack.top(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD | flags,
                ptr::from_ref(plan).cast_mut().cast(),
                ptr::from_mut(pidfd),
            )
        }
    };
    let mut pidfd: c_int = -1;
    let pid = clone(if pidfds { libc::CLONE_PIDFD } else { 0 }, &mut pidfd);
    let clone_err = io::Error::last_os_error();
    // SAFETY: `old` is the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, ptr::null_mut()) };
    if pid < 0 {
        return Err(clone_err);
    }
    // SAFETY: a descriptor the kernel just made for us, which nothing else owns.
    let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) });
    Ok((pid, pidfd))
}

/// Reaps a child that reported a failed setup step (it has exited already, or is about to).
fn reap_failed(pid: libc::pid_t) {
    let mut status = 0;
    loop {
        // SAFETY: `status` is valid for writes; `pid` is our unreaped child.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            return;
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            log::error!("reaping child {pid} after its failed start: {err}");
            return;
        }
    }
}

/// The child's entry point: sets itself up, execs, and reports the step that failed if any.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `&ChildPlan` that `clone_vfork` passed; the parent thread is
    // suspended and keeps it alive until this child execs or exits.
    let plan = unsafe { &*arg.cast_const().cast::<ChildPlan<'_>>() };
    // SAFETY: this is the child of clone(CLONE_VM | CLONE_VFORK), with every signal blocked;
    // that is what `child_exec` expects.
    let (step, errno) = unsafe { child_exec(plan) };
    plan.failure.errno.store(errno, Ordering::Relaxed);
    plan.failure.step.store(step as u8, Ordering::Relaxed);
    // SAFETY: _exit ends this process only, without atexit handlers or stdio flushes, which
    // belong to the parent.
    unsafe { libc::_exit(127) }
}

/// The child's setup and exec. Returns only on failure, with the step and its errno.
///
/// # Safety
/// Must run in the child of `clone(CLONE_VM | CLONE_VFORK)` with every signal blocked: it shares
/// the parent's memory, so it only makes async-signal-safe system calls on memory the parent
/// prepared, never allocates, takes no lock, and cannot panic.
unsafe fn child_exec(plan: &ChildPlan<'_>) -> (Step, c_int) {
    // SAFETY: every call below is a plain system call (through its libc wrapper) on valid
    // arguments: NUL-terminated strings, pointer arrays ending in NULL, and structs that outlive
    // the calls, all prepared by the parent.
    unsafe {
        // Handlers are the parent's code on the parent's memory: none may run here. Ignored
        // signals stay ignored across exec, as with fork.
        for signal in 1..=plan.max_signal {
            if signal == libc::SIGKILL || signal == libc::SIGSTOP {
                continue;
            }
            let mut current: libc::sigaction = std::mem::zeroed();
            // glibc refuses its internal signals (SIGCANCEL, SIGSETXID); they are only ever sent
            // to the parent's threads.
            if libc::sigaction(signal, ptr::null(), &mut current) != 0 {
                continue;
            }
            if current.sa_sigaction == libc::SIG_DFL || current.sa_sigaction == libc::SIG_IGN {
                continue;
            }
            let mut default: libc::sigaction = std::mem::zeroed();
            default.sa_sigaction = libc::SIG_DFL;
            if libc::sigaction(signal, &default, ptr::null_mut()) != 0 {
                return (Step::SignalHandlers, errno());
            }
        }
        // Before exec, so the parent can signal the group as soon as it has the pid.
        if libc::setpgid(0, 0) != 0 {
            return (Step::ProcessGroup, errno());
        }
        for (target, &source) in (0..).zip(plan.stdio.iter()) {
            // dup2 clears close-on-exec on the copy; the parent made every source > 2.
            if source >= 0 && libc::dup2(source, target) < 0 {
                return (Step::Stdio, errno());
            }
        }
        if let Err(step) = child_setup(plan) {
            return (step, errno());
        }
        // Reset what the parent set: std ignores SIGPIPE, signal libraries block signals.
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        if libc::sigaction(libc::SIGPIPE, &default, ptr::null_mut()) != 0 {
            return (Step::SignalHandlers, errno());
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        let rc = libc::pthread_sigmask(libc::SIG_SETMASK, &empty, ptr::null_mut());
        if rc != 0 {
            return (Step::SignalMask, rc);
        }
        (Step::Exec, exec(plan.exec))
    }
}

/// The containment steps, privileged ones first: memory cgroup, resource limits, nice value,
/// then the change of user, then the parent-death signal (a change of credentials clears it),
/// the working directory (entered as the new user) and the descriptors.
///
/// # Safety
/// As [`child_exec`]; on failure errno says why.
unsafe fn child_setup(plan: &ChildPlan<'_>) -> Result<(), Step> {
    // SAFETY: plain system calls on valid arguments, as in `child_exec`.
    unsafe {
        if let Some(procs) = plan.cgroup_procs {
            // Writing "0" moves the writing process itself (v1 and v2 alike).
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(Step::Cgroup);
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let saved = errno();
            libc::close(fd);
            if written != 1 {
                *libc::__errno_location() = saved;
                return Err(Step::Cgroup);
            }
        }
        super::set_limit(libc::RLIMIT_AS, plan.limits.address_space)
            .map_err(|_| Step::AddressSpaceLimit)?;
        super::set_limit(libc::RLIMIT_NOFILE, plan.limits.open_files)
            .map_err(|_| Step::OpenFilesLimit)?;
        super::set_limit(libc::RLIMIT_CORE, plan.limits.core_size)
            .map_err(|_| Step::CoreSizeLimit)?;
        if let Some(nice) = plan.nice
            && libc::setpriority(libc::PRIO_PROCESS, 0, nice) != 0
        {
            return Err(Step::Nice);
        }
        if let Some((uid, gid, groups)) = plan.credentials {
            become_user(uid, gid, groups)?;
        }
        // Die with the parent. Linux delivers this when the *thread* that cloned us exits, which
        // is why spawning must happen on a long-lived thread (see the crate docs).
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            return Err(Step::ParentDeathSignal);
        }
        // The parent may have died between clone and prctl: then no signal will ever come.
        if libc::getppid() != plan.parent {
            libc::_exit(111);
        }
        if let Some(dir) = plan.cwd
            && libc::chdir(dir.as_ptr()) != 0
        {
            return Err(Step::Cwd);
        }
        super::cloexec_all_but(plan.keep_fds);
        for &fd in plan.keep_fds {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(Step::PassedFds);
            }
        }
    }
    Ok(())
}

/// Becomes user `uid`, group `gid` with the supplementary `groups`, real, effective and saved
/// ids alike; groups first, while the right to change them is still held.
///
/// Raw system calls, not libc's wrappers: glibc's `setuid` and friends change the credentials of
/// every thread of the process by signalling them, and this child shares the memory, and so the
/// thread list, of a parent whose threads are not its own. The kernel's calls change the calling
/// thread's credentials, and this child is a single thread.
///
/// # Safety
/// As [`child_exec`]; on failure errno says why.
unsafe fn become_user(
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: &[libc::gid_t],
) -> Result<(), Step> {
    // SAFETY: plain system calls; `groups` is a valid array of its length, owned by the parent.
    unsafe {
        // Every argument as a whole register (the kernel keeps the low 32 bits of an id, so a
        // large id that wraps on a 32-bit target arrives intact).
        let count = groups.len() as libc::c_long;
        if libc::syscall(SYS_setgroups, count, groups.as_ptr()) != 0 {
            return Err(Step::Groups);
        }
        let gid = gid as libc::c_long;
        if libc::syscall(SYS_setresgid, gid, gid, gid) != 0 {
            return Err(Step::Gid);
        }
        let uid = uid as libc::c_long;
        if libc::syscall(SYS_setresuid, uid, uid, uid) != 0 {
            return Err(Step::Uid);
        }
    }
    Ok(())
}

/// `execvp` on prepared paths: tries each candidate in turn, skipping those that do not exist,
/// and returns the errno `execvp` would have (`EACCES` if some candidate was not executable).
///
/// # Safety
/// As [`child_exec`].
unsafe fn exec(plan: &ExecPlan) -> c_int {
    let mut got_eacces = false;
    let mut last = plan.no_candidate;
    for candidate in &plan.candidates {
        // SAFETY: NUL-terminated path, NULL-terminated arrays of NUL-terminated strings, owned
        // by the parent's `ExecPlan`.
        let mut err = unsafe {
            libc::execve(candidate.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
            errno()
        };
        if SCRIPT_FALLBACK
            && err == libc::ENOEXEC
            && let Some(slot) = plan.script_argv.get(1)
        {
            slot.store(candidate.as_ptr().cast_mut(), Ordering::Relaxed);
            // SAFETY: as above; `AtomicPtr<c_char>` has the layout of `*mut c_char`, and the
            // array ends in NULL.
            err = unsafe {
                libc::execve(
                    SHELL.as_ptr(),
                    plan.script_argv.as_ptr().cast(),
                    plan.envp.as_ptr(),
                );
                errno()
            };
        }
        match err {
            libc::EACCES => got_eacces = true,
            libc::ENOENT | libc::ESTALE | libc::ENOTDIR | libc::ENODEV | libc::ETIMEDOUT => {}
            other => return other,
        }
        last = err;
    }
    if got_eacces { libc::EACCES } else { last }
}

fn errno() -> c_int {
    // SAFETY: __errno_location returns this thread's errno, always valid to read.
    unsafe { *libc::__errno_location() }
}

fn c_string(text: &OsStr) -> io::Result<CString> {
    CString::new(text.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{:?} contains a NUL byte", text),
        )
    })
}

/// A NULL-terminated array of pointers into `strings`.
fn pointers(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(ptr::null()))
        .collect()
}

/// Builds argv, the environment (the spec's base, or this process's, then the spec's changes
/// and `extra_env`, the last change of a variable winning) and the `PATH` candidates, all before
/// the clone.
fn exec_plan(spec: &ChildSpec, extra_env: &[(OsString, OsString)]) -> io::Result<ExecPlan> {
    let base = match &spec.env_base {
        Some(base) => base.clone(),
        None => Environment::current(),
    };
    let changes: Vec<(&[u8], Option<&[u8]>)> = spec
        .env
        .0
        .iter()
        .map(|(key, value)| (key.as_bytes(), value.as_ref().map(|v| v.as_bytes())))
        .chain(
            extra_env
                .iter()
                .map(|(key, value)| (key.as_bytes(), Some(value.as_bytes()))),
        )
        .collect();
    let changed = |key: &[u8]| changes.iter().any(|(k, _)| *k == key);
    // Each changed variable once, at its last change; the removed ones not at all.
    let mut set: Vec<(&[u8], &[u8])> = Vec::with_capacity(changes.len());
    for (at, (key, value)) in changes.iter().enumerate() {
        if let Some(value) = value
            && !changes[at + 1..].iter().any(|(k, _)| k == key)
        {
            set.push((key, value));
        }
    }
    let env = set
        .iter()
        .map(|(key, value)| {
            let mut pair = key.to_vec();
            pair.push(b'=');
            pair.extend_from_slice(value);
            c_string(OsStr::from_bytes(&pair))
        })
        .collect::<io::Result<Vec<_>>>()?;
    let kept: Vec<&CStr> = base
        .vars
        .iter()
        .map(CString::as_c_str)
        .filter(|var| !changed(var_key(var.to_bytes())))
        .collect();
    // Looked up in the child's PATH, as std does when the environment is changed.
    let path = match set.iter().find(|(key, _)| *key == b"PATH") {
        Some((_, value)) => Some(*value),
        None if changed(b"PATH") => None,
        None => kept
            .iter()
            .map(|var| var.to_bytes())
            .find(|var| var_key(var) == b"PATH")
            .map(|var| &var[b"PATH=".len()..]),
    };
    let (candidates, no_candidate) = path_candidates(spec.program.as_bytes(), path)?;
    let args = std::iter::once(&spec.program)
        .chain(&spec.args)
        .map(|arg| c_string(arg))
        .collect::<io::Result<Vec<_>>>()?;
    let argv = pointers(&args);
    let envp = kept
        .iter()
        .map(|var| var.as_ptr())
        .chain(env.iter().map(|var| var.as_ptr()))
        .chain(std::iter::once(ptr::null()))
        .collect();
    let script_argv = [SHELL.as_ptr(), ptr::null()]
        .into_iter()
        .chain(argv.iter().skip(1).copied())
        .map(|p| AtomicPtr::new(p.cast_mut()))
        .collect();
    Ok(ExecPlan {
        _args: args,
        _env: (base, env),
        argv,
        envp,
        candidates,
        no_candidate,
        script_argv,
    })
}

/// The name of a `KEY=VALUE` variable (a leading `=` belongs to the name, as in std).
fn var_key(var: &[u8]) -> &[u8] {
    match var.iter().skip(1).position(|&b| b == b'=') {
        Some(at) => &var[..at + 1],
        None => var,
    }
}

/// The paths `execvp` tries for `program` with this `PATH`, or the errno it fails with before
/// trying any.
fn path_candidates(program: &[u8], path: Option<&[u8]>) -> io::Result<(Vec<CString>, c_int)> {
    let nul = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the program or PATH contains a NUL byte",
        )
    };
    if program.is_empty() {
        return Ok((Vec::new(), libc::ENOENT));
    }
    if program.contains(&b'/') {
        return Ok((vec![CString::new(program).map_err(|_| nul())?], 0));
    }
    let path = path.unwrap_or(DEFAULT_PATH);
    let file_len = program.len().min(NAME_MAX) + 1;
    let path_len = path.len().min(PATH_MAX - 1) + 1;
    if file_len > NAME_MAX || path_len + file_len + 1 > PATH_MAX {
        return Ok((Vec::new(), libc::ENAMETOOLONG));
    }
    let candidates = path
        .split(|&b| b == b':')
        .map(|dir| {
            // An empty entry is the current directory: the bare name.
            let mut full = Vec::with_capacity(dir.len() + 1 + program.len());
            if !dir.is_empty() {
                full.extend_from_slice(dir);
                full.push(b'/');
            }
            full.extend_from_slice(program);
            CString::new(full).map_err(|_| nul())
        })
        .collect::<io::Result<Vec<_>>>()?;
    Ok((candidates, libc::ENOENT))
}

/// What the child gets at 0, 1 or 2: its end of a pipe, or this process's shared `/dev/null`.
#[derive(Debug)]
enum ChildEnd {
    /// Closed here once the child has exec'd.
    Pipe(OwnedFd),
    Null(BorrowedFd<'static>),
    /// Stderr only: whatever stdout gets.
    SameAsStdout,
}

/// The descriptors for the child's stdin, stdout and stderr, made before the clone.
#[derive(Debug)]
struct Stdio {
    /// What goes to 0, 1, 2 in the child (`None`: inherited). All close-on-exec, so the child
    /// keeps only its dup2 copies.
    child: [Option<ChildEnd>; 3],
    /// Our ends of the pipes.
    parent: [Option<OwnedFd>; 3],
}

impl Stdio {
    fn new(spec: &ChildSpec) -> io::Result<Stdio> {
        let mut stdio = Stdio {
            child: [None, None, None],
            parent: [None, None, None],
        };
        match spec.stdin {
            Input::Null => stdio.child[0] = Some(ChildEnd::Null(dev_null(false)?)),
            Input::Piped => {
                let (read, write) = pipe().map_err(into_io)?;
                stdio.child[0] = Some(ChildEnd::Pipe(above_stdio(read)?));
                stdio.parent[0] = Some(write);
            }
            Input::Inherit => {}
        }
        match spec.output {
            Output::Inherit => {}
            Output::Null => {
                let null = dev_null(true)?;
                stdio.child[1] = Some(ChildEnd::Null(null));
                stdio.child[2] = Some(ChildEnd::Null(null));
            }
            Output::Capture(_) if spec.merge_stderr => {
                let (read, write) = pipe().map_err(into_io)?;
                stdio.child[1] = Some(ChildEnd::Pipe(above_stdio(write)?));
                stdio.child[2] = Some(ChildEnd::SameAsStdout);
                stdio.parent[1] = Some(if spec.stdout_piped {
                    read
                } else {
                    nonblocking(read)?
                });
            }
            Output::Capture(_) => {
                for i in 1..3 {
                    let (read, write) = pipe().map_err(into_io)?;
                    stdio.child[i] = Some(ChildEnd::Pipe(above_stdio(write)?));
                    // A stdout the caller reads itself stays as a caller expects it.
                    stdio.parent[i] = Some(if i == 1 && spec.stdout_piped {
                        read
                    } else {
                        nonblocking(read)?
                    });
                }
            }
        }
        if spec.stdout_piped && stdio.parent[1].is_none() {
            let (read, write) = pipe().map_err(into_io)?;
            stdio.child[1] = Some(ChildEnd::Pipe(above_stdio(write)?));
            stdio.parent[1] = Some(read);
        }
        Ok(stdio)
    }

    fn child_fds(&self) -> [RawFd; 3] {
        let fd = |end: &Option<ChildEnd>| match end {
            None | Some(ChildEnd::SameAsStdout) => -1,
            Some(ChildEnd::Pipe(fd)) => fd.as_raw_fd(),
            Some(ChildEnd::Null(fd)) => fd.as_raw_fd(),
        };
        let mut fds = self.child.each_ref().map(fd);
        if matches!(self.child[2], Some(ChildEnd::SameAsStdout)) {
            fds[2] = fds[1];
        }
        fds
    }
}

/// The read end of a captured stream, made non-blocking: the reaper reads it when `epoll` or
/// `poll` said it was readable, but a readiness seen before another read took the bytes (a
/// drain after the exit, say) must cost a `WouldBlock`, never a reaper thread blocked for as
/// long as a descendant that escaped the group keeps the pipe open.
fn nonblocking(fd: OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn into_io(err: Error) -> io::Error {
    match err {
        Error::Os { source, .. } => source,
        other => io::Error::other(other.to_string()),
    }
}

/// `/dev/null` for reading or for writing, opened once per process (above stderr, close-on-exec)
/// and shared by every spawn after: opening it for each child was a path lookup per job.
/// Nothing in this process closes descriptors it does not own, so the shared one stays valid.
fn dev_null(write: bool) -> io::Result<BorrowedFd<'static>> {
    static NULL: [OnceLock<OwnedFd>; 2] = [OnceLock::new(), OnceLock::new()];
    let cell = &NULL[usize::from(write)];
    if let Some(fd) = cell.get() {
        return Ok(fd.as_fd());
    }
    let mode = if write {
        libc::O_WRONLY
    } else {
        libc::O_RDONLY
    };
    // SAFETY: a NUL-terminated path and valid flags.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), mode | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open succeeded, so `fd` is a fresh descriptor nothing else owns.
    let fd = above_stdio(unsafe { OwnedFd::from_raw_fd(fd) })?;
    // Another thread may have won the race: then ours is closed and theirs used.
    Ok(cell.get_or_init(|| fd).as_fd())
}

/// `fd`, moved above stderr if it is 0, 1 or 2 (close-on-exec either way): if this process runs
/// with 0, 1 or 2 closed, a new descriptor can land there, and the child's dup2 onto that number
/// would clobber it before it is used.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on an open descriptor we own.
    let copy = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl succeeded, so `copy` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

thread_local! {
    /// The child stack this thread used last, kept for its next spawn: mapping, guarding,
    /// faulting in and unmapping a fresh one cost several system calls per job. One per thread
    /// is enough, since the clone suspends the thread until the child no longer uses it; it is
    /// unmapped when the thread exits.
    static CHILD_STACK: Cell<Option<ChildStack>> = const { Cell::new(None) };
}

/// The child's stack: an anonymous mapping with a guard page below it, so an overflow faults
/// instead of writing over the parent's memory.
#[derive(Debug)]
struct ChildStack {
    base: *mut c_void,
    len: usize,
}

impl ChildStack {
    fn new() -> io::Result<ChildStack> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = STACK_SIZE + page;
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = ChildStack { base, len };
        // Stacks grow down on every architecture this builds for.
        // SAFETY: the first page of the mapping we just made.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The initial stack pointer: the end of the mapping, page-aligned and so 16-byte aligned.
    fn top(&self) -> *mut c_void {
        self.base.wrapping_byte_add(self.len)
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer used: the child has exec'd or exited.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(candidates: &[CString]) -> Vec<&str> {
        candidates.iter().map(|c| c.to_str().unwrap()).collect()
    }

    #[test]
    fn path_lookup_follows_execvp() {
        let (found, _) = path_candidates(b"ls", Some(b"/a:/b/c::/d")).unwrap();
        assert_eq!(strings(&found), ["/a/ls", "/b/c/ls", "ls", "/d/ls"]);
        let (found, _) = path_candidates(b"./x", Some(b"/a")).unwrap();
        assert_eq!(strings(&found), ["./x"]);
        let (found, errno) = path_candidates(b"", Some(b"/a")).unwrap();
        assert!(found.is_empty());
        assert_eq!(errno, libc::ENOENT);
        let (found, errno) = path_candidates(&[b'x'; 300], None).unwrap();
        assert!(found.is_empty());
        assert_eq!(errno, libc::ENAMETOOLONG);
        let (found, _) = path_candidates(b"ls", None).unwrap();
        assert_eq!(found.len(), DEFAULT_PATH.split(|&b| b == b':').count());
    }

    #[test]
    fn the_child_comes_with_a_pidfd_that_polls_readable_at_its_exit() {
        let spec = ChildSpec::new("sh")
            .args(["-c", "read x"])
            .stdin(Input::Piped)
            .output(Output::Null);
        let spawned = spawn(&spec, &[], Vec::new(), None).unwrap();
        let pidfd = spawned
            .pidfd
            .expect("Linux 5.3 or later makes a pidfd at the clone");
        let fdinfo =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).unwrap();
        assert!(
            fdinfo
                .lines()
                .any(|l| l == format!("Pid:\t{}", spawned.pid)),
            "the pidfd is the child's: {fdinfo}"
        );
        // SAFETY: F_GETFD on a descriptor we own.
        let flags = unsafe { libc::fcntl(pidfd.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC, "close-on-exec");
        let mut poll = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        assert_eq!(ready, 0, "running: not readable");
        drop(spawned.stdin); // EOF: `read` returns and the shell exits
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, 20_000) };
        assert_eq!(ready, 1, "readable at the exit");
        reap_failed(spawned.pid); // reaps it, failed or not
    }
}
