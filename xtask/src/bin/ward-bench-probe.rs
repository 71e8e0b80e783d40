//! `ward-bench-probe`: the release-built helper of `cargo xtask bench`'s cross-tool comparisons.
//!
//! One binary, several roles, so that every tool compared runs the very same job program:
//!
//! - `stamp LOG [PATH]`: the job. Appends `<monotonic ns> <PATH or $WARD_PATH>` to LOG in one
//!   `write`, taken first thing in `main`, so "job started" means the same for every tool.
//! - `worker LOG`: a JSON-lines worker (ward's protocol). Per request it appends
//!   `<ns received> <ns replied> <path>` to LOG and answers `{"id": N, "ok": true}`.
//! - `debouncer DIR MS -- CMD...`: the notify-debouncer-full anchor: watches DIR recursively with
//!   an MS window and runs CMD (waited for) once per delivered batch, as a small tool would.
//! - `spawn-loop N -- CMD...`: runs CMD N times one after the other, each waited for (the plain
//!   fork+exec anchor of ward's exec dispatch, one worker).
//! - `pipe-client N TREE [--same-cpu] -- CMD...`: starts CMD as a persistent JSON-lines worker
//!   and sends it N requests one at a time, each the very bytes ward would send for a file
//!   `TREE/f<i>` just created (the raw pipe anchor of ward's worker dispatch). With `--same-cpu`
//!   the client and the worker run on the CPU the client started on.
//! - `events LOG`: the job of watchexec's burst: reads the batch's events as JSON lines on stdin
//!   (`--emit-events-to=json-stdio`) and appends `<ns> <path> <path>...` to LOG.
//! - `paths LOG`: the command of the `batch` comparison, the same for ward and watchexec: reads
//!   the paths of its run, one per line, from the file named by `WATCHEXEC_EVENTS_FILE`
//!   (watchexec's `--emit-events-to=file`, each line `kind:path`) or else from stdin (a ward
//!   batch trigger), and once they are all read appends `<ns> <path> <path>...` to LOG.
//! - `walk DIR`: prints the files under DIR and the nanoseconds a plain recursive walk took.
//! - `listen HOST:PORT`: the service of the `services` comparison: binds and listens first thing,
//!   then accepts forever, closing each connection at once. Ready as soon as it can be, so that
//!   a restart's figure is the supervisor's and its readiness check's, not the program's start.
//!
//! Times are `CLOCK_MONOTONIC` nanoseconds, comparable across processes on one machine.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

fn now_ns() -> u64 {
    // SAFETY: a zeroed timespec is valid; clock_gettime only writes through the valid pointer.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid out pointer and CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn append(log: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(log)
}

fn main() -> ExitCode {
    let started = now_ns();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["stamp", log, rest @ ..] => stamp(started, Path::new(log), rest.first().copied()),
        ["worker", log] => worker(Path::new(log)),
        ["debouncer", dir, ms, "--", cmd @ ..] => debouncer(Path::new(dir), ms, cmd),
        ["spawn-loop", n, "--", cmd @ ..] => spawn_loop(n, cmd),
        ["pipe-client", n, tree, "--", cmd @ ..] => pipe_client(n, tree, false, cmd),
        ["pipe-client", n, tree, "--same-cpu", "--", cmd @ ..] => pipe_client(n, tree, true, cmd),
        ["events", log] => events(started, Path::new(log)),
        ["paths", log] => paths(Path::new(log)),
        ["walk", dir] => walk(Path::new(dir)),
        ["listen", address] => listen(address),
        _ => {
            Err("usage: ward-bench-probe stamp|worker|debouncer|spawn-loop|pipe-client|events|paths|walk|listen".into())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ward-bench-probe: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn stamp(started: u64, log: &Path, path: Option<&str>) -> Result {
    let path = match path {
        Some(p) => p.to_owned(),
        None => std::env::var("WARD_PATH").unwrap_or_default(),
    };
    append(log)?.write_all(format!("{started} {path}\n").as_bytes())?;
    Ok(())
}

fn events(started: u64, log: &Path) -> Result {
    fn paths(value: &serde_json::Value, out: &mut String) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("absolute", serde_json::Value::String(p)) => {
                            out.push(' ');
                            out.push_str(p);
                        }
                        _ => paths(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| paths(v, out)),
            _ => {}
        }
    }
    let mut line = started.to_string();
    for event in std::io::stdin().lock().lines() {
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(&event?) {
            paths(&value, &mut line);
        }
    }
    line.push('\n');
    append(log)?.write_all(line.as_bytes())?;
    Ok(())
}

fn paths(log: &Path) -> Result {
    let input: Box<dyn BufRead> = match std::env::var_os("WATCHEXEC_EVENTS_FILE") {
        Some(file) => Box::new(BufReader::new(File::open(file)?)),
        None => Box::new(std::io::stdin().lock()),
    };
    let mut line = String::new();
    for given in input.lines() {
        let given = given?;
        // watchexec's `create:/abs/path`; ward's paths are absolute as they are.
        let path = match given.split_once(':') {
            Some((kind, path)) if !kind.starts_with('/') => path,
            _ => given.as_str(),
        };
        if !path.is_empty() {
            line.push(' ');
            line.push_str(path);
        }
    }
    let line = format!("{}{line}\n", now_ns());
    append(log)?.write_all(line.as_bytes())?;
    Ok(())
}

fn worker(log: &Path) -> Result {
    let mut log = append(log)?;
    let stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lines() {
        let received = now_ns();
        let line = line?;
        let request: serde_json::Value = serde_json::from_str(&line)?;
        let id = request["id"].as_u64().unwrap_or(0);
        let path = request["path"].as_str().unwrap_or("").to_owned();
        stdout.write_all(format!("{{\"id\":{id},\"ok\":true}}\n").as_bytes())?;
        stdout.flush()?;
        let replied = now_ns();
        log.write_all(format!("{received} {replied} {path}\n").as_bytes())?;
    }
    Ok(())
}

fn command(cmd: &[&str]) -> Result<Command> {
    let (program, args) = cmd.split_first().ok_or("no command")?;
    let mut c = Command::new(program);
    c.args(args);
    Ok(c)
}

fn debouncer(dir: &Path, ms: &str, cmd: &[&str]) -> Result {
    let window = Duration::from_millis(ms.parse()?);
    let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
    let mut debouncer = notify_debouncer_full::new_debouncer(
        window,
        None,
        move |res: notify_debouncer_full::DebounceEventResult| {
            let Ok(events) = res else { return };
            let Some(path) = events.iter().flat_map(|e| e.paths.iter()).next() else {
                return;
            };
            let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
            if let Ok(mut c) = command(&args) {
                let _ = c.env("WARD_PATH", path).status();
            }
        },
    )?;
    debouncer.watch(dir, notify::RecursiveMode::Recursive)?;
    // Runs until the harness kills it.
    loop {
        std::thread::park();
    }
}

fn spawn_loop(n: &str, cmd: &[&str]) -> Result {
    let n: usize = n.parse()?;
    for i in 0..n {
        command(cmd)?.arg(format!("f{i}")).status()?;
    }
    Ok(())
}

fn pipe_client(n: &str, tree: &str, same_cpu: bool, cmd: &[&str]) -> Result {
    let n: u64 = n.parse()?;
    if same_cpu {
        // Before the spawn, so the worker inherits the affinity.
        stay_on_this_cpu()?;
    }
    let mut child = command(cmd)?
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut to = child.stdin.take().ok_or("no stdin")?;
    let mut from = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let mut reply = String::new();
    let mut samples = Vec::with_capacity(n as usize);
    // Ids from 1, as a fresh ward worker gets them.
    for id in 1..=n {
        // Built as ward builds it (sorted keys, one line), so both send the same bytes.
        let mut request = serde_json::to_vec(&serde_json::json!({
            "id": id,
            "event": "created",
            "path": format!("{tree}/f{}", id - 1),
        }))?;
        request.push(b'\n');
        let sent = now_ns();
        to.write_all(&request)?;
        to.flush()?;
        reply.clear();
        from.read_line(&mut reply)?;
        let parsed: serde_json::Value = serde_json::from_str(&reply)?;
        if parsed["id"].as_u64() != Some(id) || parsed["ok"] != true {
            return Err(format!("bad reply {reply:?}").into());
        }
        samples.push(now_ns() - sent);
    }
    drop(to);
    child.wait()?;
    samples.sort_unstable();
    println!("round_trip_p50_ns {}", samples[samples.len() / 2]);
    Ok(())
}

/// Binds this process to the CPU it runs on now.
fn stay_on_this_cpu() -> Result {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    if cpu < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is a CPU number the kernel gave, below CPU_SETSIZE; the write stays in `set`.
    unsafe { libc::CPU_SET(cpu as usize, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_setaffinity(0, size_of_val(&set), &set) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

fn listen(address: &str) -> Result {
    // std sets SO_REUSEADDR: the replacement binds while the killed one's connections linger.
    let listener = std::net::TcpListener::bind(address)?;
    // Runs until the harness (or ward) kills it; a failed accept (a peer gone) changes nothing.
    loop {
        drop(listener.accept());
    }
}

fn walk(dir: &Path) -> Result {
    fn visit(dir: &Path, files: &mut u64) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let meta = std::fs::symlink_metadata(entry.path())?;
            if meta.is_dir() {
                visit(&entry.path(), files)?;
            } else {
                *files += 1;
            }
        }
        Ok(())
    }
    let t0 = now_ns();
    let mut files = 0;
    visit(dir, &mut files)?;
    println!("files {files} walk_ns {}", now_ns() - t0);
    Ok(())
}
