//! `cargo run -p ward-watch --example watch -- DIR...`: prints one JSON line per change under the
//! given directories, resolves every rescan into concrete changes, and prints a summary on Ctrl-C.
//!
//! Each line is `{"kind":"created","path":"...","dir":false}` (`created`, `modified`, `removed`,
//! or `renamed` with a `from`). A path that is not UTF-8 is written as `path_escaped` (or
//! `from_escaped`) instead: its bytes, with every byte that is not part of valid UTF-8 written
//! `\xNN` and every backslash doubled, which reverses exactly. A rescan prints
//! `{"kind":"rescan","path":...,"reason":...}` followed by the changes it resolved to, so the
//! output always converges to the disk. `.wardignore` files are honoured; `RUST_LOG=debug` shows
//! the watcher's log on stderr.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use crossbeam_channel::select;
use serde_json::{Value, json};
use ward_watch::{Change, ChangeKind, Item, Snapshot, Watcher};

fn main() -> ExitCode {
    env_logger::init();
    let dirs: Vec<String> = std::env::args().skip(1).collect();
    if dirs.is_empty() || dirs.iter().any(|d| d == "-h" || d == "--help") {
        eprintln!("usage: cargo run -p ward-watch --example watch -- DIR...");
        return ExitCode::from(2);
    }
    let watcher = match Watcher::builder()
        .roots(&dirs)
        .ignore_file(".wardignore")
        .build()
    {
        Ok(w) => w,
        Err(e) => {
            eprintln!("watch: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    }) {
        eprintln!("watch: cannot catch Ctrl-C: {e}");
        return ExitCode::FAILURE;
    }
    let mut snapshot = Snapshot::of_roots(watcher.ignore_rules());
    eprintln!(
        "watching {} ({} paths); Ctrl-C to stop",
        dirs.join(", "),
        snapshot.len()
    );
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    loop {
        select! {
            recv(watcher.batches()) -> batch => {
                let Ok(batch) = batch else { break };
                *counts.entry("batches").or_default() += 1;
                for item in &batch.items {
                    match item {
                        Item::Change(c) => {
                            snapshot.apply(c);
                            print_change(c, &mut counts);
                        }
                        Item::Rescan(r) => {
                            *counts.entry("rescans").or_default() += 1;
                            let mut line = vec![("kind".to_string(), json!("rescan"))];
                            put_path(&mut line, "path", &r.path);
                            line.push(("reason".into(), json!(r.reason.name())));
                            print_line(&line);
                            for c in snapshot.rescan(&r.path) {
                                print_change(&c, &mut counts);
                            }
                        }
                        Item::Error(e) => {
                            *counts.entry("errors").or_default() += 1;
                            println!("{}", json!({"kind": "error", "message": e.to_string()}));
                        }
                        _ => {}
                    }
                }
            }
            recv(stop_rx) -> _ => break,
        }
    }
    let stats = watcher.stats();
    let mut summary: serde_json::Map<String, Value> = counts
        .into_iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    summary.insert("paths".into(), json!(snapshot.len()));
    summary.insert("events".into(), json!(stats.events));
    summary.insert("peak_pending".into(), json!(stats.peak_pending));
    summary.insert("watches".into(), json!(stats.watches));
    println!("{}", json!({ "summary": summary }));
    ExitCode::SUCCESS
}

fn print_change(c: &Change, counts: &mut BTreeMap<&'static str, u64>) {
    *counts.entry(c.kind.name()).or_default() += 1;
    let mut line = vec![("kind".to_string(), json!(c.kind.name()))];
    put_path(&mut line, "path", &c.path);
    if let ChangeKind::Renamed { from } = &c.kind {
        put_path(&mut line, "from", from);
    }
    line.push(("dir".into(), json!(c.is_dir)));
    print_line(&line);
}

/// Prints one JSON object with its fields in the order given.
fn print_line(fields: &[(String, Value)]) {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", json!(k)))
        .collect();
    println!("{{{}}}", body.join(","));
}

/// Puts `path` under `key` if it is UTF-8, else its reversible escape under `{key}_escaped`.
fn put_path(line: &mut Vec<(String, Value)>, key: &str, path: &Path) {
    match path.to_str() {
        Some(s) => line.push((key.into(), json!(s))),
        None => line.push((
            format!("{key}_escaped"),
            json!(escape(path.as_os_str().as_encoded_bytes())),
        )),
    }
}

/// Valid UTF-8 runs as they are (backslashes doubled), every other byte as `\xNN`.
fn escape(mut bytes: &[u8]) -> String {
    let mut out = String::new();
    while !bytes.is_empty() {
        let (valid, rest) = match std::str::from_utf8(bytes) {
            Ok(s) => (s, &[][..]),
            Err(e) => {
                let (good, bad) = bytes.split_at(e.valid_up_to());
                (std::str::from_utf8(good).unwrap_or_default(), bad)
            }
        };
        out.push_str(&valid.replace('\\', "\\\\"));
        if let Some((b, tail)) = rest.split_first() {
            out.push_str(&format!("\\x{b:02x}"));
            bytes = tail;
        } else {
            bytes = rest;
        }
    }
    out
}
