//! The fatal-signal handler: async-signal-safe reporting of SIGSEGV, SIGBUS, SIGILL, SIGFPE and
//! SIGABRT, then the default action, so the exit status stays true.
//!
//! Everything the handler needs is prepared by [`install`]: the record descriptor, a preamble
//! naming the executable and its load base, the previous actions to chain to, and glibc's
//! unwinder (loaded by one warm-up `backtrace` call). In the handler there is no allocation, no
//! lock and no formatting machinery: fixed stack buffers, `write(2)`, `sigaction(2)`, `raise(3)`.

use crate::error::{Error, Result};

/// The signals that kill a process with a report.
pub(crate) const FATAL_SIGNALS: [libc::c_int; 5] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGABRT,
];

/// The name of a signal number, for people (`SIG11` style for a number with no name).
pub(crate) fn signal_name(signal: i32) -> String {
    match ward_sys::signal::name(signal) {
        Some(name) => name.to_owned(),
        None => format!("SIG{signal}"),
    }
}

#[cfg(target_os = "linux")]
pub(crate) use linux::{install, raw_frames};

#[cfg(not(target_os = "linux"))]
pub(crate) fn install(_record_fd: i32) -> Result<()> {
    Err(Error::Unsupported("the fatal-signal handler"))
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn raw_frames() -> Vec<String> {
    Vec::new()
}

#[cfg(target_os = "linux")]
mod linux {
    use std::ffi::c_void;
    use std::fs;
    use std::io;
    use std::mem;
    use std::ptr;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicI32, Ordering};

    use super::{Error, FATAL_SIGNALS, Result};

    /// The most return addresses the handler records: enough to see the crash site, small
    /// enough for the few KiB of alternate stack the Rust runtime gives other threads.
    const MAX_FRAMES: usize = 64;
    /// Alternate stack for the installing thread: room for the unwinder and a nested signal.
    const ALT_STACK_SIZE: usize = 64 * 1024;

    /// What the handler reads; set once by `install`, before any handler can run.
    struct HandlerState {
        record_fd: libc::c_int,
        /// `exe=...\nexe_base=0x...\nexe_end=0x...\n` and the `object=...` lines, formatted at
        /// install time.
        preamble: Box<[u8]>,
        previous: [libc::sigaction; FATAL_SIGNALS.len()],
    }

    static STATE: OnceLock<HandlerState> = OnceLock::new();
    /// The thread id inside the handler, 0 when none is: tells a nested signal (same thread)
    /// from a second crashing thread.
    static HANDLING_TID: AtomicI32 = AtomicI32::new(0);

    unsafe extern "C" {
        // glibc's unwinder front end; preloaded by `install`.
        #[cfg(target_env = "gnu")]
        fn backtrace(buffer: *mut *mut c_void, size: libc::c_int) -> libc::c_int;
    }

    /// Installs the handler for [`FATAL_SIGNALS`], writing records to `record_fd` (which must
    /// stay open for the life of the process).
    pub(crate) fn install(record_fd: libc::c_int) -> Result<()> {
        let preamble = exe_preamble();
        warm_up_unwinder();
        install_alt_stack()?;
        // SAFETY: an all-zero sigaction is a valid value (SIG_DFL, empty mask, no flags).
        let mut previous: [libc::sigaction; FATAL_SIGNALS.len()] = unsafe { mem::zeroed() };
        for (i, &sig) in FATAL_SIGNALS.iter().enumerate() {
            // SAFETY: `previous[i]` is a valid out pointer; a null new action only queries.
            if unsafe { libc::sigaction(sig, ptr::null(), &mut previous[i]) } != 0 {
                return Err(Error::last_os("sigaction (query)"));
            }
        }
        STATE
            .set(HandlerState {
                record_fd,
                preamble: preamble.into_boxed_slice(),
                previous,
            })
            .map_err(|_| Error::AlreadyInstalled)?;
        for &sig in &FATAL_SIGNALS {
            // SAFETY: zeroed is a valid sigaction; we fill the handler, mask and flags below.
            let mut action: libc::sigaction = unsafe { mem::zeroed() };
            action.sa_sigaction = handle as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            // SAFETY: `sa_mask` is a valid sigset_t to initialize.
            unsafe { libc::sigemptyset(&mut action.sa_mask) };
            // SAFETY: `action` is fully initialized and `handle` has the SA_SIGINFO signature.
            if unsafe { libc::sigaction(sig, &action, ptr::null_mut()) } != 0 {
                return Err(Error::last_os("sigaction (install)"));
            }
        }
        Ok(())
    }

    /// The calling thread's return addresses, innermost first, as hex: a backtrace that costs a
    /// walk of the stack and nothing more (no debug info is loaded to name them).
    pub(crate) fn raw_frames() -> Vec<String> {
        #[cfg(target_env = "gnu")]
        {
            let mut frames = [ptr::null_mut::<c_void>(); 64];
            // SAFETY: the buffer holds 64 pointers and we pass 64.
            let n = unsafe { backtrace(frames.as_mut_ptr(), frames.len() as libc::c_int) };
            frames[..n.max(0) as usize]
                .iter()
                .map(|&ip| format!("{:#x}", ip as usize))
                .collect()
        }
        #[cfg(not(target_env = "gnu"))]
        {
            Vec::new()
        }
    }

    /// glibc loads libgcc on the first `backtrace` call, which allocates: do it now, outside
    /// any signal handler.
    fn warm_up_unwinder() {
        #[cfg(target_env = "gnu")]
        {
            let mut frames = [ptr::null_mut::<c_void>(); 4];
            // SAFETY: the buffer holds 4 pointers and we pass 4.
            unsafe { backtrace(frames.as_mut_ptr(), frames.len() as libc::c_int) };
        }
    }

    /// Gives the calling thread a roomy alternate stack. It is leaked on purpose: the thread
    /// (usually `main`) may take a signal until the process ends.
    fn install_alt_stack() -> Result<()> {
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let stack = unsafe {
            libc::mmap(
                ptr::null_mut(),
                ALT_STACK_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if stack == libc::MAP_FAILED {
            return Err(Error::last_os("mmap (alternate signal stack)"));
        }
        let ss = libc::stack_t {
            ss_sp: stack,
            ss_flags: 0,
            ss_size: ALT_STACK_SIZE,
        };
        // SAFETY: `ss` describes the mapping above, which is never unmapped.
        if unsafe { libc::sigaltstack(&ss, ptr::null_mut()) } != 0 {
            return Err(Error::last_os("sigaltstack"));
        }
        Ok(())
    }

    /// The executable's path and loaded range, then one `object=` line for each object mapped
    /// now (the executable first): what the parent needs to name the frames later. A non-PIE
    /// executable gets base 0.
    fn exe_preamble() -> Vec<u8> {
        let exe = fs::read_link("/proc/self/exe")
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let objects = crate::objects::loaded(&exe);
        let (base, end) = objects
            .first()
            .filter(|o| o.path == exe)
            .map_or(("0x0", "0x0"), |o| (o.bias.as_str(), o.end.as_str()));
        let mut text = format!("exe={exe}\nexe_base={base}\nexe_end={end}\n");
        for object in &objects {
            text.push_str("object=");
            text.push_str(&object.to_record_value());
            text.push('\n');
        }
        text.into_bytes()
    }

    /// A fixed-size line buffer: the handler's only way to format.
    struct Line {
        bytes: [u8; 192],
        len: usize,
    }

    impl Line {
        fn new() -> Self {
            Line {
                bytes: [0; 192],
                len: 0,
            }
        }

        fn str(&mut self, s: &[u8]) -> &mut Self {
            let n = s.len().min(self.bytes.len() - self.len);
            self.bytes[self.len..self.len + n].copy_from_slice(&s[..n]);
            self.len += n;
            self
        }

        fn dec(&mut self, v: i64) -> &mut Self {
            if v < 0 {
                self.str(b"-");
            }
            let mut digits = [0u8; 20];
            let mut n = v.unsigned_abs();
            let mut i = digits.len();
            loop {
                i -= 1;
                digits[i] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            self.str(&digits[i..])
        }

        fn hex(&mut self, v: usize) -> &mut Self {
            let mut digits = [0u8; 16];
            let mut n = v;
            let mut i = digits.len();
            loop {
                i -= 1;
                digits[i] = b"0123456789abcdef"[n & 0xf];
                n >>= 4;
                if n == 0 {
                    break;
                }
            }
            self.str(b"0x").str(&digits[i..])
        }

        fn as_bytes(&self) -> &[u8] {
            &self.bytes[..self.len]
        }
    }

    /// `write(2)` until done or failed; errors are ignored because there is nobody to tell.
    fn write_all(fd: libc::c_int, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            // SAFETY: `bytes` is a valid readable slice of the given length.
            let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
            if n < 0 {
                if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return;
            }
            if n == 0 {
                return;
            }
            bytes = &bytes[n as usize..];
        }
    }

    fn emit(record_fd: libc::c_int, line: &Line) {
        if record_fd >= 0 {
            write_all(record_fd, line.as_bytes());
        }
        write_all(libc::STDERR_FILENO, line.as_bytes());
    }

    fn gettid() -> libc::c_int {
        // SAFETY: gettid takes no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_gettid) as libc::c_int }
    }

    /// The handler. Async-signal-safe: only stack buffers and the syscalls named in the module
    /// docs, plus glibc's `backtrace` (preloaded; see the crate's known problems).
    extern "C" fn handle(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
        let tid = gettid();
        let mut first = true;
        if let Err(holder) =
            HANDLING_TID.compare_exchange(0, tid, Ordering::SeqCst, Ordering::SeqCst)
        {
            first = false;
            if holder != tid {
                // Another thread is writing its report: give it up to two seconds to finish
                // and kill the process, rather than interleave or cut it short.
                for _ in 0..200 {
                    let pause = libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 10_000_000,
                    };
                    // SAFETY: nanosleep is async-signal-safe; `pause` is valid.
                    unsafe { libc::nanosleep(&pause, ptr::null_mut()) };
                }
            }
        }
        if first && let Some(state) = STATE.get() {
            report(state, sig, info, interrupted_pc(context), tid);
            chain(state, sig, info, context);
        }
        die(sig);
    }

    /// The address of the instruction the signal interrupted, from the context the kernel
    /// saved; `None` where this crate does not know the context's layout.
    fn interrupted_pc(context: *mut c_void) -> Option<usize> {
        if context.is_null() {
            return None;
        }
        #[cfg(all(target_arch = "x86_64", target_env = "gnu"))]
        {
            // SAFETY: the kernel passes an SA_SIGINFO handler a valid `ucontext_t`.
            let uc = unsafe { &*context.cast::<libc::ucontext_t>() };
            Some(uc.uc_mcontext.gregs[libc::REG_RIP as usize] as usize)
        }
        #[cfg(all(target_arch = "aarch64", target_env = "gnu"))]
        {
            // SAFETY: the kernel passes an SA_SIGINFO handler a valid `ucontext_t`.
            let uc = unsafe { &*context.cast::<libc::ucontext_t>() };
            Some(uc.uc_mcontext.pc as usize)
        }
        #[cfg(not(all(
            any(target_arch = "x86_64", target_arch = "aarch64"),
            target_env = "gnu"
        )))]
        {
            None
        }
    }

    /// Writes the record entry for `sig` to the record and to stderr.
    fn report(
        state: &HandlerState,
        sig: libc::c_int,
        info: *mut libc::siginfo_t,
        pc: Option<usize>,
        tid: i32,
    ) {
        let fd = state.record_fd;
        // Async-signal-safe: a static table, no allocation.
        let name = ward_sys::signal::name(sig).unwrap_or("SIG?");
        let (code, address) = if info.is_null() {
            (0, None)
        } else {
            // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
            let info = unsafe { &*info };
            let faulting = matches!(
                sig,
                libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE
            ) && info.si_code > 0;
            // SAFETY: si_addr is the union member the kernel fills for these signals when
            // si_code > 0 (a fault, not a kill).
            let address = faulting.then(|| unsafe { info.si_addr() } as usize);
            (info.si_code, address)
        };
        // SAFETY: getpid is async-signal-safe and cannot fail.
        let pid = unsafe { libc::getpid() };

        let mut line = Line::new();
        line.str(b"\nward-crashdiag: fatal signal ")
            .dec(i64::from(sig))
            .str(b" (")
            .str(name.as_bytes())
            .str(b")");
        if let Some(a) = address {
            line.str(b" at address ").hex(a);
        }
        line.str(b" in pid ")
            .dec(i64::from(pid))
            .str(b" tid ")
            .dec(i64::from(tid))
            .str(b"\n");
        write_all(libc::STDERR_FILENO, line.as_bytes());

        let mut line = Line::new();
        line.str(crate::record::BEGIN.as_bytes()).str(b"signal\n");
        line.str(b"signal=").dec(i64::from(sig)).str(b"\n");
        line.str(b"name=").str(name.as_bytes()).str(b"\n");
        line.str(b"code=").dec(i64::from(code)).str(b"\n");
        if let Some(a) = address {
            line.str(b"addr=").hex(a).str(b"\n");
        }
        line.str(b"pid=").dec(i64::from(pid)).str(b"\n");
        line.str(b"tid=").dec(i64::from(tid)).str(b"\n");
        if let Some(pc) = pc {
            line.str(b"pc=").hex(pc).str(b"\n");
        }
        if fd >= 0 {
            write_all(fd, line.as_bytes());
            write_all(fd, &state.preamble);
        }

        let mut frames = [ptr::null_mut::<c_void>(); MAX_FRAMES];
        #[cfg(target_env = "gnu")]
        // SAFETY: the buffer holds MAX_FRAMES pointers and we pass MAX_FRAMES.
        let n = unsafe { backtrace(frames.as_mut_ptr(), MAX_FRAMES as libc::c_int) }.max(0);
        #[cfg(not(target_env = "gnu"))]
        let n = 0;
        for frame in frames.iter().take(n as usize) {
            let mut line = Line::new();
            line.str(b"frame=").hex(*frame as usize).str(b"\n");
            emit(fd, &line);
        }
        let mut line = Line::new();
        line.str(crate::record::END.as_bytes()).str(b"\n");
        if fd >= 0 {
            write_all(fd, line.as_bytes());
        }
    }

    /// Calls the handler that was installed before ours (the Rust runtime's stack-overflow
    /// reporter for SIGSEGV and SIGBUS), which may print and abort, or reset and return.
    fn chain(
        state: &HandlerState,
        sig: libc::c_int,
        info: *mut libc::siginfo_t,
        context: *mut c_void,
    ) {
        let Some(i) = FATAL_SIGNALS.iter().position(|&s| s == sig) else {
            return;
        };
        let previous = &state.previous[i];
        let handler = previous.sa_sigaction;
        if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
            return;
        }
        if previous.sa_flags & libc::SA_SIGINFO != 0 {
            // SAFETY: with SA_SIGINFO, the previous owner installed a three-argument handler,
            // and we pass it the arguments the kernel gave us.
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut c_void) =
                unsafe { mem::transmute(handler) };
            f(sig, info, context);
        } else {
            // SAFETY: without SA_SIGINFO, the previous handler takes the signal number only.
            let f: extern "C" fn(libc::c_int) = unsafe { mem::transmute(handler) };
            f(sig);
        }
    }

    /// Restores the default action and raises the signal again: it is blocked while we run, so
    /// it is delivered, and kills the process, as soon as the handler returns.
    fn die(sig: libc::c_int) {
        // SAFETY: zeroed is SIG_DFL with an empty mask; sigaction and raise are
        // async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = mem::zeroed();
            action.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &action, ptr::null_mut());
            libc::raise(sig);
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn line_formats_numbers_without_allocating() {
            let mut line = Line::new();
            line.dec(0)
                .str(b" ")
                .dec(-42)
                .str(b" ")
                .hex(0)
                .str(b" ")
                .hex(0xdead_beef);
            assert_eq!(line.as_bytes(), b"0 -42 0x0 0xdeadbeef");
            let mut full = Line::new();
            for _ in 0..100 {
                full.str(b"abc");
            }
            assert_eq!(full.as_bytes().len(), 192);
        }

        #[test]
        fn preamble_names_this_executable() {
            let text = String::from_utf8(exe_preamble()).unwrap();
            let exe = std::env::current_exe().unwrap();
            assert!(text.contains(&format!("exe={}", exe.display())), "{text}");
            // A PIE (as tests are built) is loaded at its lowest mapping, as /proc/self/maps
            // shows it.
            let maps = fs::read_to_string("/proc/self/maps").unwrap();
            let lowest = maps
                .lines()
                .filter(|l| l.ends_with(&*exe.to_string_lossy()))
                .filter_map(|l| l.split('-').next())
                .map(|a| u64::from_str_radix(a, 16).unwrap())
                .min()
                .unwrap();
            assert!(text.contains(&format!("exe_base={lowest:#x}\n")), "{text}");
            assert!(
                text.contains(&format!("object={lowest:#x} {lowest:#x} ")),
                "{text}"
            );
        }
    }
}
