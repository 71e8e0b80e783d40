//! `ward-stress-worker`: the job program of `cargo xtask stress`. It records each job in the
//! stress ledger and misbehaves as the file's first line asks (see `stress/ledger.rs`).
//!
//! `ward-stress-worker worker LEDGER MAX_MEMORY_MB [TRIGGER]` speaks ward's JSON-lines worker
//! protocol; `ward-stress-worker exec LEDGER MAX_MEMORY_MB [TRIGGER]` handles the one job ward's
//! environment names. Either way the process limits its address space to MAX_MEMORY_MB first, so
//! that a `hog` fails an allocation instead of taking the machine's memory. TRIGGER is the name of
//! the trigger whose command line this is, written into each entry: ward tells a job nothing of
//! its trigger, and the reload fault judges which one ran each path.

// The harness uses more of the ledger module than the worker does.
#[allow(dead_code)]
#[path = "../stress/ledger.rs"]
mod ledger;

use std::fs::File;
use std::io::{BufRead, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ledger::{Directive, Entry, Phase};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn limit_address_space(mib: u64) {
    let bytes = mib.saturating_mul(1024 * 1024);
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: setrlimit reads the struct we pass and has no other precondition.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } != 0 {
        eprintln!(
            "ward-stress-worker: cannot limit the address space: {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(2);
    }
}

fn append(ledger: &mut File, entry: &Entry) {
    if let Err(e) = ledger.write_all(&entry.encode()) {
        eprintln!("ward-stress-worker: cannot write the ledger: {e}");
        std::process::exit(2);
    }
}

/// Handles one change: records its start, acts on the directive, records its end.
fn handle(ledger: &mut File, trigger: &str, event: &str, path: &str, old_path: Option<&str>) {
    let t_ms = now_ms();
    let content = if event == "removed" {
        None
    } else {
        // Gone since the change: the next change (its removal) tells the rest.
        std::fs::read(path).ok()
    };
    let directive = content
        .as_deref()
        .map_or(Directive::Plain, Directive::parse);
    let mut entry = Entry {
        phase: Phase::Start,
        t_ms,
        pid: std::process::id(),
        event: event.to_owned(),
        hash: content.as_deref().map(ledger::content_hash),
        directive: directive.name(),
        trigger: trigger.to_owned(),
        path: path.to_owned(),
        old_path: old_path.map(str::to_owned),
    };
    append(ledger, &entry);
    act(directive);
    entry.phase = Phase::Done;
    entry.t_ms = now_ms();
    append(ledger, &entry);
}

fn act(directive: Directive) {
    match directive {
        Directive::Plain => {}
        Directive::Panic => panic!("ward-stress-worker was asked to panic"),
        Directive::Segv => {
            // SAFETY: not safe at all, on purpose: a write through a null pointer, so that the
            // process dies of a real SIGSEGV rather than one sent by kill.
            unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
        }
        Directive::Abort => std::process::abort(),
        Directive::Hog => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                // Zeroed, so the kernel maps the pages without their being touched: RLIMIT_AS
                // counts address space, so the limit is hit within microseconds however loaded
                // the machine (touching 512 MiB took over the 3 s job timeout on a busy 2-core
                // machine, and the hog was reported as hung). Resident growth is the mem-limit
                // fault's part. black_box, so the optimizer keeps the allocations.
                hoard.push(std::hint::black_box(vec![0u8; 16 << 20]));
            }
        }
        Directive::Hang => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        Directive::Exit(code) => std::process::exit(code),
        Directive::Sleep(ms) => std::thread::sleep(Duration::from_millis(ms)),
        Directive::Say(lines) => {
            let mut err = std::io::stderr().lock();
            for i in 1..=lines {
                // ward may be unable to keep them (a full disk): that is what they test.
                let _ = writeln!(
                    err,
                    "ward-stress-worker: line {i} of {lines} asked for, to be kept in ward's log"
                );
            }
        }
        Directive::Grow(mib) => {
            let kept = std::hint::black_box(vec![1u8; (mib as usize) << 20]);
            // Kept for the process's life: ward is to notice the RSS and recycle the worker.
            std::mem::forget(kept);
        }
    }
}

fn open_ledger(path: &str) -> File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| {
            eprintln!("ward-stress-worker: cannot open the ledger {path}: {e}");
            std::process::exit(2);
        })
}

fn worker(ledger: &mut File, trigger: &str) {
    let stdout = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { return };
        let Ok(request) = serde_json::from_str::<serde_json::Value>(&line) else {
            eprintln!("ward-stress-worker: a request that is not JSON: {line:?}");
            std::process::exit(2);
        };
        let path = request["path"].as_str().unwrap_or_default();
        let event = request["event"].as_str().unwrap_or("?");
        handle(ledger, trigger, event, path, request["old_path"].as_str());
        let mut out = stdout.lock();
        let reply = serde_json::json!({ "id": request["id"], "ok": true });
        if writeln!(out, "{reply}").and_then(|()| out.flush()).is_err() {
            return;
        }
    }
}

/// A batch trigger's run: the paths on stdin, one a line; each is handled as an exec job
/// handles its one (a path gone by now was removed, or renamed away).
fn batch(ledger: &mut File, trigger: &str) {
    for line in std::io::stdin().lock().lines() {
        let Ok(path) = line else { return };
        let event = if std::fs::symlink_metadata(&path).is_ok() {
            "batch"
        } else {
            "removed"
        };
        handle(ledger, trigger, event, &path, None);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    const USAGE: &str =
        "usage: ward-stress-worker worker|exec|batch LEDGER MAX_MEMORY_MB [TRIGGER]";
    let (mode, ledger, mib, trigger) = match args.as_slice() {
        [mode, ledger, mib] => (mode.as_str(), ledger, mib.parse::<u64>().ok(), "-"),
        [mode, ledger, mib, trigger] if !trigger.contains(['\t', '\0']) && !trigger.is_empty() => (
            mode.as_str(),
            ledger,
            mib.parse::<u64>().ok(),
            trigger.as_str(),
        ),
        _ => ("", &String::new(), None, "-"),
    };
    let Some(mib) = mib.filter(|&m| m > 0) else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    limit_address_space(mib);
    let mut ledger = open_ledger(ledger);
    match mode {
        "worker" => worker(&mut ledger, trigger),
        "batch" => batch(&mut ledger, trigger),
        "exec" => {
            let var = |name| std::env::var(name).ok();
            let path = var("WARD_PATH").unwrap_or_default();
            let event = var("WARD_EVENT").unwrap_or_else(|| "?".into());
            handle(
                &mut ledger,
                trigger,
                &event,
                &path,
                var("WARD_OLD_PATH").as_deref(),
            );
        }
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}
