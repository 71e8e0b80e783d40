//! `ward failures` and `ward retry`: the paths whose jobs gave up, and running them again. They
//! ask the running server, or read and write the manifest themselves while ward is stopped.

use std::io::Write as _;
use std::path::PathBuf;

use super::{STATUS_TIMEOUT, existing_state_dir};
use crate::manifest::{Manifest, Update};
use crate::protocol::{FAILURES_PAGE, FailureLine, FailuresPage, Request, Retried};
use crate::state::{Pidfile, PidfileState, StateDir, names};
use crate::{Error, Launch, Outcome, control};

/// `ward failures`: the paths that gave up, with trigger, event, attempts, last error, time and
/// crash report; `--json` prints one JSON object per line.
pub fn failures(launch: &Launch, as_json: bool) -> Outcome {
    list(launch, as_json).into()
}

fn list(launch: &Launch, as_json: bool) -> Result<(), Error> {
    let page = match existing_state_dir(launch)? {
        None => FailuresPage {
            gave_up: 0,
            failures: Vec::new(),
        },
        Some(state) if running(&state)? => control::ask(
            &state.join(names::SOCKET),
            &Request::Failures { limit: None },
            STATUS_TIMEOUT,
        )?,
        Some(state) => match stopped_manifest(&state)? {
            None => FailuresPage {
                gave_up: 0,
                failures: Vec::new(),
            },
            Some(manifest) => FailuresPage {
                gave_up: manifest.gave_up()?,
                failures: manifest
                    .failures(None, FAILURES_PAGE)?
                    .iter()
                    .map(|(path, failure)| FailureLine::of(path, failure))
                    .collect(),
            },
        },
    };
    let mut out = std::io::stdout().lock();
    let written = if as_json {
        page.failures.iter().try_for_each(|line| {
            let text = serde_json::to_string(line).unwrap_or_default();
            writeln!(out, "{text}")
        })
    } else {
        print_text(&mut out, &page)
    };
    written.map_err(|e| Error::io("writing to stdout", e))
}

fn print_text(out: &mut impl std::io::Write, page: &FailuresPage) -> std::io::Result<()> {
    if page.gave_up == 0 {
        return writeln!(out, "no path gave up");
    }
    writeln!(
        out,
        "{} path(s) gave up; each runs again when its file changes, or on `ward retry PATH...` \
         (`--all` for every one):",
        page.gave_up
    )?;
    for f in &page.failures {
        let at = ward_sys::time::UtcTime::from_unix_ms(f.at.saturating_mul(1000));
        writeln!(out, "{}", f.path)?;
        writeln!(
            out,
            "    trigger {}, {}, {} attempt(s), gave up at {at}",
            f.trigger,
            f.event.as_str(),
            f.attempts
        )?;
        writeln!(out, "    error   {}", f.error)?;
        if let Some(report) = &f.report {
            writeln!(out, "    report  {report}")?;
        }
    }
    let unlisted = page.gave_up.saturating_sub(page.failures.len() as u64);
    if unlisted > 0 {
        writeln!(
            out,
            "... and {unlisted} more (`ward retry --all` retries them too)"
        )?;
    }
    Ok(())
}

/// `ward retry PATH...` / `ward retry --all`: forgets the give-ups of the paths (directories:
/// everything below them) and runs their jobs again; while ward is stopped, the next start does.
pub fn retry(launch: &Launch, paths: &[PathBuf], all: bool) -> Outcome {
    retry_paths(launch, paths, all).into()
}

fn retry_paths(launch: &Launch, paths: &[PathBuf], all: bool) -> Result<(), Error> {
    if paths.is_empty() && !all {
        return Err(Error::Usage(
            "retry what? give the paths that gave up (`ward failures` lists them), or --all".into(),
        ));
    }
    let cwd = std::env::current_dir().map_err(|e| Error::io("current directory", e))?;
    let paths: Vec<PathBuf> = paths.iter().map(|p| cwd.join(p)).collect();
    let Some(state) = existing_state_dir(launch)? else {
        return Err(Error::Usage(format!(
            "nothing gave up: no state directory {} ({})",
            launch.state_dir_path()?.display(),
            launch.origin.hint()
        )));
    };
    let (reply, when) = if running(&state)? {
        let request = Request::Retry { paths, all };
        let reply: Retried = control::ask(&state.join(names::SOCKET), &request, STATUS_TIMEOUT)?;
        (reply, "now")
    } else {
        (retry_stopped(&state, &paths, all)?, "at the next start")
    };
    println!("{} path(s) to run again {when}", reply.retried);
    if reply.not_failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "nothing gave up under {} (`ward failures` lists what did)",
            reply.not_failed.join(", ")
        )))
    }
}

/// Forgets the give-ups in the manifest of a stopped ward: the next start's comparison owes them.
fn retry_stopped(state: &StateDir, paths: &[PathBuf], all: bool) -> Result<Retried, Error> {
    let Some(mut manifest) = stopped_manifest(state)? else {
        return Ok(Retried {
            retried: 0,
            not_failed: paths.iter().map(|p| p.display().to_string()).collect(),
        });
    };
    let mut retried = 0;
    let mut not_failed = Vec::new();
    let mut updates = Vec::new();
    if all {
        retried = manifest.gave_up()?;
        updates.push(Update::Retried { path: "/".into() });
    } else {
        for path in paths {
            match manifest.gave_up_under(path)? {
                0 => not_failed.push(path.display().to_string()),
                n => {
                    retried += n;
                    updates.push(Update::Retried { path: path.clone() });
                }
            }
        }
    }
    manifest.apply(&updates)?;
    // The jobs they owe are published at the next start, perhaps within the duplicate window of
    // the messages that gave up: their ids must differ.
    #[cfg(feature = "nats")]
    for update in &updates {
        crate::retried::record_stopped(state, update.path());
    }
    Ok(Retried {
        retried,
        not_failed,
    })
}

fn running(state: &StateDir) -> Result<bool, Error> {
    Ok(matches!(Pidfile::inspect(state)?, PidfileState::Running(_)))
}

/// The manifest of a stopped ward, if it has one.
fn stopped_manifest(state: &StateDir) -> Result<Option<Manifest>, Error> {
    let path = state.join(names::MANIFEST);
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some(Manifest::open(&path)?.0))
}
