//! Reloading: the configuration read again and applied to what can change while the server runs,
//! on SIGHUP or a `reload` request (which is answered with the result).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::handover::Handover;
use crate::protocol::Reloaded;
use crate::state::StateDir;
use crate::tracker::Tracker;

/// A reload done: the configuration the server runs now, what became of the new one, and the
/// dispatcher it replaced, whose idle workers [`Reload::finish`] stops.
pub(super) struct Reload {
    config: Config,
    pub outcome: Reloaded,
    retired: Option<Arc<Dispatcher>>,
}

impl Reload {
    /// Stops the replaced dispatcher's idle workers (which may take their stop grace) and
    /// returns the configuration to run. A `reload` request is answered before this, so that
    /// its client does not wait for the old workers.
    pub fn finish(self) -> Config {
        if let Some(retired) = self.retired {
            retired.stop_workers();
        }
        self.config
    }
}

/// Reads the configuration again from the launch in `handover`; on success records it there (a
/// server restarted after a crash then runs it) and puts its triggers in place, else keeps `old`.
/// `cause` says in the log what asked for it; `backstop` is the pool's timeout, which only a
/// restart changes.
pub(super) fn reload(
    cause: &str,
    handover: &mut Handover,
    state: &StateDir,
    old: Config,
    dispatcher: &RwLock<Arc<Dispatcher>>,
    tracker: &mut Tracker,
    backstop: Duration,
) -> Reload {
    log::info!("{cause}: reloading the configuration");
    let refused = |old: Config, e: crate::Error| {
        log::error!("reload refused, keeping the running configuration: {e}");
        let error = e.to_string();
        Reload {
            config: old,
            outcome: if e.is_usage() {
                Reloaded::Invalid { error }
            } else {
                Reloaded::Failed { error }
            },
            retired: None,
        }
    };
    let new = match handover.launch.config_with_missing_roots() {
        Ok(new) => new,
        Err(e) => return refused(old, e),
    };
    let fresh = match Dispatcher::reloaded(new.clone(), state.clone(), Some(&dispatcher.read())) {
        Ok(d) => Arc::new(d),
        Err(e) => return refused(old, e),
    };
    let after_restart = needing_restart(&old, &new);
    if !after_restart.is_empty() {
        log::warn!(
            "reload: {} apply only after `ward restart`",
            after_restart.join(", ")
        );
    }
    let slow = super::job::past_backstop(&new, backstop);
    if !slow.is_empty() {
        log::warn!(
            "reload: the timeout_s (with stop_grace_s) of trigger(s) {} outlasts the job pool's \
             backstop of {backstop:?}, which follows only after `ward restart`: until then the \
             pool counts a job of theirs still running then as stuck, and starts another job \
             thread in its place",
            slow.join(", ")
        );
    }
    let previous = std::mem::replace(&mut *dispatcher.write(), fresh);
    tracker.set_triggers(dispatcher.read().triggers().clone());
    handover.config = new.clone();
    handover.apply_umask();
    if let Err(e) = handover.record(state) {
        log::error!(
            "the reloaded configuration is not recorded; a restarted server would run the one before: {e}"
        );
    }
    // Queued jobs keep the trigger that matched them: a removed or changed trigger still runs
    // its queued jobs as it was configured when they were queued.
    log::info!(
        "reload: {} trigger(s) now active; jobs already queued run with the trigger that matched them",
        new.triggers.len()
    );
    let outcome = Reloaded::Applied {
        triggers: new.triggers.len(),
        after_restart,
    };
    // Settings that need a restart stay as they run.
    let config = Config {
        roots: old.roots,
        ignore: old.ignore,
        backend: old.backend,
        debounce: old.debounce,
        max_wait: old.max_wait,
        workers: old.workers,
        ..new
    };
    Reload {
        config,
        outcome,
        retired: Some(previous),
    }
}

/// The settings that differ between `old` and `new` but that the running server keeps until a
/// restart, named as in the config file.
fn needing_restart(old: &Config, new: &Config) -> Vec<String> {
    [
        ("watch.roots", old.roots != new.roots),
        ("watch.ignore", old.ignore != new.ignore),
        ("watch.backend", old.backend != new.backend),
        ("watch.debounce_ms", old.debounce != new.debounce),
        ("watch.max_wait_ms", old.max_wait != new.max_wait),
        ("jobs.workers", old.workers != new.workers),
        ("metrics.listen", old.metrics_listen != new.metrics_listen),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(name, _)| name.to_owned())
    .collect()
}
