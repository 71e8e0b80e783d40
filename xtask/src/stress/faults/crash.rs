//! The crash faults (`panic`, `segv`, `abort`, `hog`, `hang`, `exit`): a file that tells the job
//! to die that way, once through the worker and once through exec. Each death is expected in a
//! crash report; the files are removed once the reports are in. Judged by the verdict's common
//! lines (`verdict.rs`).

use std::time::{Duration, Instant};

use super::super::check::ExpectedDeath;
use super::super::config::JOB_TIMEOUT_S;
use super::super::ledger::Directive;
use super::super::scene::Scene;
use super::Injected;

/// Injects crash number `n`, a job that dies as `directive` says.
pub fn inject(scene: &mut Scene<'_>, f: &mut Injected, directive: Directive, n: usize) {
    let causes = f.kind.expected_causes();
    let mut files = Vec::new();
    for exec in [false, true] {
        let path = scene.fault_file(f.kind.name(), n, exec);
        if scene.write_directive(&path, directive, n).is_some() {
            f.expected.push(ExpectedDeath {
                fault: format!("{} ({})", f.label, if exec { "exec" } else { "worker" }),
                role_contains: path.to_string_lossy().into_owned(),
                pid: None,
                causes: causes.clone(),
            });
            files.push(path);
        }
    }
    f.note = format!(
        "{} job through the worker and through exec",
        directive.name()
    );
    // Three attempts of a hang take three timeouts; everything else dies at once.
    let limit = (1 + 2) * (JOB_TIMEOUT_S + 2) + 10;
    scene.remove_once_reported(files, Instant::now() + Duration::from_secs(limit));
}
