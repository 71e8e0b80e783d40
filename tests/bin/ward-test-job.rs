//! A job program for the end-to-end tests: records what ward hands it, or dies in a chosen way.
//!
//! `ward-test-job record LEDGER` appends `EVENT\tPATH\0` (the path's raw bytes, exactly as ward
//! passed them in `WARD_PATH`) to LEDGER; `panic`, `segv`, `abort` and `exit N` die as named.
//! `ward-test-job gated LEDGER GATE` waits for the file GATE, then records `gated-CONTENT`.
//! `ward-test-job worker LEDGER` is a persistent worker speaking ward's JSON-lines protocol: it
//! records `worker-EVENT:CONTENT\tPATH\0`, and for a path ending in `.die` aborts mid-job, for `.garbage`
//! replies with something that is not JSON, for `.twice` replies again when the next request comes. `ward-test-job grow MB` touches MB mebibytes, one at
//! a time, then exits 0: under a smaller memory limit it is killed on the way.

use std::io::{BufRead, Write};
use std::os::unix::ffi::OsStrExt;

fn append(ledger: &str, entry: &[u8]) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(ledger)
        .expect("open ledger");
    // One write per entry: O_APPEND keeps concurrent jobs' entries whole.
    file.write_all(entry).expect("write ledger");
}

fn worker(ledger: &str) {
    let stdout = std::io::stdout();
    // A reply owed again (`.twice`), sent when the next request comes.
    let mut again: Option<serde_json::Value> = None;
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("read request");
        if let Some(reply) = again.take() {
            let mut out = stdout.lock();
            writeln!(out, "{reply}").unwrap();
            out.flush().unwrap();
        }
        let request: serde_json::Value = serde_json::from_str(&line).expect("request is JSON");
        let path = request["path"]
            .as_str()
            .expect("request has a path")
            .to_owned();
        if path.ends_with(".die") {
            std::process::abort();
        }
        let mut out = stdout.lock();
        if path.ends_with(".garbage") {
            writeln!(out, "this is not json").unwrap();
            out.flush().unwrap();
            continue;
        }
        // The content as the job saw it, so a test can check it processed the final version.
        let content = std::fs::read_to_string(&path).unwrap_or_default();
        let event = request["event"].as_str().unwrap_or("?");
        let mut entry = format!("worker-{event}:{}\t{path}", content.trim()).into_bytes();
        entry.push(0);
        append(ledger, &entry);
        let reply = serde_json::json!({ "id": request["id"], "ok": true });
        writeln!(out, "{reply}").unwrap();
        out.flush().unwrap();
        if path.ends_with(".twice") {
            // Replied again when the next request comes: read apart from the first reply.
            again = Some(reply);
        }
    }
}

/// `hold-lock FILE MS`: locks FILE as a keeper locks its pidfile and writes its pid in it, then
/// ends its main thread while another thread keeps the process, and with it the lock, for MS
/// milliseconds more: what a keeper killed a moment ago looks like.
fn hold_lock(args: &[String]) -> ! {
    use std::os::fd::AsRawFd;
    let (Some(path), Some(ms)) = (args.first(), args.get(1).and_then(|m| m.parse().ok())) else {
        eprintln!("usage: ward-test-job hold-lock FILE MS");
        std::process::exit(2);
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .expect("open the lock file");
    // SAFETY: flock on a descriptor this process owns; no memory is passed.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(locked, 0, "lock {path}");
    writeln!(file, "{}", std::process::id()).expect("write the pid");
    std::thread::spawn(move || {
        let _file = file;
        std::thread::sleep(std::time::Duration::from_millis(ms));
        std::process::exit(0);
    });
    // SAFETY: the raw `exit` ends only the calling thread, without unwinding (which
    // `pthread_exit` would do, through Rust's `main`); the other thread owns everything it uses
    // and ends the process.
    unsafe { libc::syscall(libc::SYS_exit, 0) };
    unreachable!("SYS_exit returned")
}

/// Reads the second field of a struct through a null pointer: a real SIGSEGV at address 8
/// (reading address 0 itself is a panic in a debug build, Rust's null check).
#[inline(never)]
fn read_field_through_null() -> u64 {
    let pair: *const [u64; 2] = std::hint::black_box(std::ptr::null());
    let second = pair.cast::<u64>().wrapping_add(1);
    // SAFETY: not safe at all: a deliberate read through a null struct pointer.
    unsafe { *std::hint::black_box(second) } // the null read
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("record") => {
            let ledger = args.get(1).expect("record needs a ledger path");
            let path = std::env::var_os("WARD_PATH").expect("WARD_PATH is set");
            let event = std::env::var("WARD_EVENT").expect("WARD_EVENT is set");
            let mut entry = format!("{event}\t").into_bytes();
            entry.extend_from_slice(path.as_bytes());
            entry.push(0);
            append(ledger, &entry);
        }
        Some("fail") => {
            // `fail LEDGER`: records that it ran, then fails (a poison job).
            let ledger = args.get(1).expect("fail needs a ledger path");
            let path = std::env::var_os("WARD_PATH").expect("WARD_PATH is set");
            let mut entry = b"fail\t".to_vec();
            entry.extend_from_slice(path.as_bytes());
            entry.push(0);
            append(ledger, &entry);
            std::process::exit(1);
        }
        Some("env") => {
            // `env LEDGER NAME`: records `env-VALUE` (or `env-unset`) for the variable NAME.
            let ledger = args.get(1).expect("env needs a ledger path");
            let name = args.get(2).expect("env needs a variable name");
            let value = std::env::var(name).unwrap_or_else(|_| "unset".to_owned());
            let path = std::env::var_os("WARD_PATH").expect("WARD_PATH is set");
            let mut entry = format!("env-{value}\t").into_bytes();
            entry.extend_from_slice(path.as_bytes());
            entry.push(0);
            append(ledger, &entry);
        }
        Some("gated") => {
            // `gated LEDGER GATE`: waits (at most a minute) until the file GATE exists, then records
            // `gated-CONTENT` with the file's content as read then, so a test can hold a job
            // running and tell which version of the file the job saw.
            let ledger = args.get(1).expect("gated needs a ledger path");
            let gate = std::path::Path::new(args.get(2).expect("gated needs a gate path"));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while !gate.exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let path = std::env::var_os("WARD_PATH").expect("WARD_PATH is set");
            let content = std::fs::read_to_string(&path).unwrap_or_default();
            let mut entry = format!("gated-{}\t", content.trim()).into_bytes();
            entry.extend_from_slice(path.as_bytes());
            entry.push(0);
            append(ledger, &entry);
        }
        Some("worker") => worker(args.get(1).expect("worker needs a ledger path")),
        Some("panic") => panic!("ward-test-job was asked to panic"),
        Some("segv") => {
            // SAFETY: not safe at all, on purpose: a write through a null pointer, so that the
            // process dies of a real SIGSEGV rather than one sent by kill.
            unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
        }
        Some("captured-segv") => {
            // A Rust service that links ward-crashdiag: its capture where ward says, then a
            // read through a null struct pointer in a function the report must name.
            let config = ward_crashdiag::CaptureConfig::from_env("service")
                .expect("run by ward, which names the crash directory");
            let _capture = ward_crashdiag::install(config).expect("install the crash capture");
            std::hint::black_box(read_field_through_null());
        }
        Some("grow") => {
            let mib: usize = args.get(1).and_then(|m| m.parse().ok()).expect("grow MB");
            let mut held = Vec::with_capacity(mib);
            for _ in 0..mib {
                // Written, not just reserved: only touched pages are charged to a memory cgroup.
                held.push(vec![1u8; 1 << 20]);
            }
            std::hint::black_box(&held);
        }
        Some("abort") => std::process::abort(),
        Some("hold-lock") => hold_lock(&args[1..]),
        Some("exit") => std::process::exit(args.get(1).and_then(|c| c.parse().ok()).unwrap_or(1)),
        _ => {
            eprintln!(
                "usage: ward-test-job record LEDGER | gated LEDGER GATE | worker LEDGER | grow MB | panic | segv | abort | exit N | hold-lock FILE MS"
            );
            std::process::exit(2);
        }
    }
}
